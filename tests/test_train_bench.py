"""scripts/bench_train.py: the CPU path with a tiny shape, the named shapes and the row syntax."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from longctx.train import flops_per_token

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_train.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def test_cpu_run_prints_a_table_of_medians_beside_the_baseline(bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = bench.main(["--device", "cpu", "--shape", "tiny", "--length", "64", "--steps", "2", "--warmup", "1",
                     "--documents", "3", "--json", str(out),
                     "--row", "transformers", "--row", "longctx",
                     "--row", "longctx:gradient_checkpointing=true;chunk_size=16"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "tokens/s" in printed and "recomputation not counted" in printed and "median of 2" in printed
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [r["row"] for r in rows] == ["transformers", "longctx", "longctx:gradient_checkpointing=True;chunk_size=16"]
    for r in rows:
        assert r["status"] == "ok" and r["tokens_per_s"] > 0 and len(r["step_s"]) == 2
        assert r["mfu"] is None  # no peak FLOP/s known for a CPU
    assert rows[1]["attention"] == "sdpa"
    assert result["flops_per_token"] == pytest.approx(flops_per_token(bench.model_config("tiny", 64), 64))


def test_named_shapes_have_their_models_sizes(bench):
    import torch
    from transformers import AutoModelForCausalLM

    expected = {"smollm2-135m": 134.5e6, "tinyllama-1.1b": 1.100e9, "llama2-7b": 6.738e9}
    for shape, params in expected.items():
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(bench.model_config(shape, 4096))
        assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, rel=0.01), shape
    # SmolLM2-135M at 32k is about 4.2 GFLOP a token under this convention (6N plus causal attention)
    assert flops_per_token(bench.model_config("smollm2-135m", 32768), 32768) == pytest.approx(4.2e9, rel=0.02)
    config = bench.model_config("smollm2-135m", 32768)
    assert config.rope_parameters["rope_type"] == "linear" and config.rope_parameters["factor"] == 4


def test_rows_take_trainer_settings_but_not_the_runs(bench):
    assert bench.parse_row("longctx:sdpa_backends=cudnn,flash;compile=true") == (
        "longctx", {"sdpa_backends": ("cudnn", "flash"), "compile": True})
    assert bench.parse_row("longctx:lora.enabled=true;lora.r=8") == ("longctx", {"lora": {"enabled": True, "r": 8}})
    with pytest.raises(SystemExit, match="whole run"):
        bench.parse_row("longctx:strategy=fsdp")
    with pytest.raises(SystemExit, match="not a TrainSettings field"):
        bench.parse_row("longctx:speed=11")


def test_max_length_tries_lengths_in_turn_and_stops_at_the_first_that_fails(tmp_path):
    # 48 tokens train; 0 tokens is refused by bench_train.py, so 96 is never tried
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # this venv's python
    done = subprocess.run(["bash", str(SCRIPT.parent / "max_length.sh"), str(tmp_path), "1", "48 0 96",
                           "--device", "cpu", "--shape", "tiny", "--row", "longctx"],
                          check=False, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    assert summary[0].startswith("48 ok") and summary[1].startswith("0 failed")
    assert summary[-1] == "longest length that trained: 48" and len(summary) == 3
    assert json.loads((tmp_path / "48.json").read_text())["rows"][0]["status"] == "ok"
    assert "--length 0: a training sequence needs at least 2 tokens" in (tmp_path / "0.log").read_text()
    assert not (tmp_path / "96.log").exists()

"""docs/measurements/scripts/rope_smollm2_gpu.py, end to end on the CPU with --smoke (tiny random LLaMA, L = 128)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("rope_smollm2_gpu", REPO / "docs" / "measurements" / "scripts" / "rope_smollm2_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_method_lists_are_the_requested_ones():
    script = load_script()
    labels = [v["label"] for v in script.variants([2.0, 4.0, 8.0], ["paper"])]
    assert labels == ["none", "pi s=2", "pi s=4", "pi s=8", "ntk s=2", "ntk s=4", "ntk s=8",
                      "yarn s=2", "yarn s=4", "yarn s=8", "dynamic ntk"]
    assert [v["label"] for v in script.passkey_variants(["paper", "code"])] == [
        "none", "pi s=4", "ntk s=4", "yarn s=4", "dynamic ntk"]
    args = script.parse_args(["--model", "m.gguf", "--cache", "c", "--out", "o"])
    assert args.lengths == [2048, 4096, 8192, 16384, 32768, 65536]
    assert args.passkey_lengths == [2048, 4096, 8192, 16384, 32768] and args.trials == 10


def test_smoke_run_writes_the_tables(tmp_path):
    script = load_script()
    result = script.main(["--smoke", "--out", str(tmp_path), "--lengths", "64", "256", "--passkey-lengths", "192",
                          "--scales", "2", "--yarn-ramps", "paper", "--trials", "1"])
    saved = json.loads((tmp_path / "rope_smollm2.json").read_text())
    table = (tmp_path / "rope_smollm2.md").read_text()
    assert [r["label"] for r in saved["perplexity"]] == ["none", "pi s=2", "ntk s=2", "yarn s=2", "dynamic ntk"]
    rows = {r["label"]: r["by_length"] for r in result["perplexity"]}
    for by_length in rows.values():
        for n in (64, 256):
            assert math.isfinite(by_length[n]["perplexity"]) and len(by_length[n]["nll_by_book"]) == 6
    # within L = 128 dynamic NTK is unchanged RoPE; beyond it, it is not
    assert rows["dynamic ntk"][64]["perplexity"] == rows["none"][64]["perplexity"]
    assert rows["dynamic ntk"][256]["perplexity"] != rows["none"][256]["perplexity"]
    assert rows["pi s=2"][64]["perplexity"] != rows["none"][64]["perplexity"]
    assert [r["label"] for r in saved["passkey"]] == ["none", "pi s=4", "ntk s=4", "yarn s=4", "dynamic ntk"]
    assert all(len(r["by_length"]["192"]["trials"]) == 1 for r in saved["passkey"])
    assert "| yarn s=2 |" in table and "| dynamic ntk |" in table and "Machine: cpu" in table

"""The whole DAG, end to end on a small config, and what Snakemake does on reruns (dry runs).

One session-scoped run (a few minutes on 2 CPU cores) backs every test here: it pretrains a tiny
LLaMA on Austen, extends it 4x with PI (fine-tuned) and YaRN (not fine-tuned), and evaluates.
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

SMALL = {
    "experiment": "small",
    "variants": [
        {"method": "pi", "scale": 4, "finetune": True},
        {"method": "yarn", "scale": 4},
    ],
    "progressive": [],
    "finetune": {"steps": 30},
    "evaluate": {"one_job_per": "length", "length_multiples": [1, 4], "passkey": {"trials": 2},
                 "ruler": {"enabled": False}},
    "wandb": {"mode": "disabled"},
}


def small_config(tmp: Path, **changes) -> Path:
    from longctx.config import deep_merge

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg = deep_merge(cfg, SMALL)
    cfg["corpora"]["austen"]["root"] = str(REPO / "data" / "austen")
    cfg = deep_merge(cfg, changes)
    path = tmp / f"config-{len(list(tmp.glob('config-*')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def snakemake(workdir: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
           "--configfile", str(config), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True)


def planned_jobs(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> job count from a dry run's job stats table."""
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    stats = text.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", stats, re.M)}


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workflow")
    config = small_config(tmp)
    proc = snakemake(tmp, config)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp, config


def perplexity(rows, variant, length):
    (value,) = [float(r["value"]) for r in rows
                if r["variant"] == variant and r["eval"] == "perplexity" and r["metric"] == "perplexity"
                and int(r["length"]) == length]
    return value


@pytest.mark.slow
def test_whole_dag_reproduces_the_two_perplexity_relations(small_run):
    workdir, _ = small_run
    out = workdir / "results" / "small"
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert {"experiment", "model", "method", "scale", "stage", "eval", "dataset", "length", "metric",
            "value"} <= set(rows[0])
    base_1x, base_4x = perplexity(rows, "base", 128), perplexity(rows, "base", 512)
    pi_ft_4x = perplexity(rows, "pi-x4-ft", 512)
    # unchanged RoPE past its original context is clearly worse ...
    assert base_4x > 1.2 * base_1x, (base_1x, base_4x)
    # ... and PI after fine-tuning at 4x is clearly better than unchanged RoPE at 4x
    assert pi_ft_4x < base_4x / 1.2, (pi_ft_4x, base_4x)
    report = (out / "report.md").read_text()
    assert "pi-x4-ft" in report and (out / "plots" / "perplexity.png").stat().st_size > 1000


@pytest.mark.slow
def test_second_run_has_nothing_to_do(small_run):
    workdir, config = small_run
    assert planned_jobs(snakemake(workdir, config, "-n")) == {}


@pytest.mark.slow
def test_changing_one_methods_parameters_reruns_only_its_jobs(small_run):
    workdir, _ = small_run
    changed = small_config(workdir, variants=[{"method": "pi", "scale": 4, "finetune": True},
                                              {"method": "yarn", "scale": 4, "params": {"beta": 16}}])
    proc = snakemake(workdir, changed, "-n")
    jobs = planned_jobs(proc)
    assert jobs == {"evaluate": 4, "report": 1, "all": 1}, jobs  # yarn-x4: perplexity+passkey at 2 lengths
    outputs = " ".join(re.findall(r"^\s*output: (.*)$", proc.stdout + proc.stderr, re.M))
    rerun_variants = set(re.findall(r"eval/([^/\s]+)/", outputs))
    assert rerun_variants == {"yarn-x4"}, outputs


def test_one_target_builds_only_what_it_needs(tmp_path):
    config = small_config(tmp_path)
    proc = snakemake(tmp_path, config, "-n", "results/small/eval/base/perplexity-128.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert planned_jobs(proc) == {"tokenizer": 1, "prepare_corpus": 2, "base_model": 1, "evaluate": 1}


def test_a_local_model_folder_becomes_the_base_model_and_is_tracked_as_an_input(tmp_path, make_tiny_llama,
                                                                                 austen_tokenizer):
    from transformers import AutoTokenizer

    source = tmp_path / "my-model"
    make_tiny_llama(vocab_size=512, context=32).save_pretrained(source)
    AutoTokenizer.from_pretrained(austen_tokenizer).save_pretrained(source)
    # (passkey's prompt needs more than this model's 32 tokens: off)
    config = small_config(tmp_path, model={"source": "local", "name_or_path": str(source), "original_context": 32},
                          evaluate={"passkey": {"enabled": False}})
    target = "results/small/models/base"

    proc = snakemake(tmp_path, config, target)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / target / "model.safetensors").exists()
    assert "Nothing to be done" in (dry := snakemake(tmp_path, config, "-n", target)).stdout + dry.stderr

    # a replaced source model rebuilds what was made from it
    (source / "config.json").touch()
    source.touch()
    assert planned_jobs(snakemake(tmp_path, config, "-n", target)) == {"tokenizer": 1, "base_model": 1}


def test_a_deleted_evaluation_json_is_rebuilt_by_a_plain_run(small_run):
    workdir, config = small_run
    (workdir / "results" / "small" / "eval" / "yarn-x4" / "passkey-512.json").unlink()
    assert planned_jobs(snakemake(workdir, config, "-n")) == {"evaluate": 1, "report": 1, "all": 1}


def tiny_experiment(results_dir: str) -> dict:
    """Every kind of rule (tokenizer, prepare, base model, fine-tune, search, recovery, evaluate,
    report) on a model and data small enough for seconds per job."""
    return {
        "experiment": "tiny", "results_dir": results_dir,
        "corpora": {"austen": {"source": "local", "root": str(REPO / "data" / "austen"), "documents": "chapter",
                               "splits": {"train": ["persuasion.txt"], "validation": ["northanger_abbey.txt"],
                                          "test": ["northanger_abbey.txt"]}}},
        "model": {"source": "pretrain", "pretrain": {"vocab_size": 300, "hidden_size": 32, "intermediate_size": 64,
                                                     "num_layers": 1, "num_heads": 2, "num_kv_heads": 2,
                                                     "context": 32, "steps": 2, "batch_size": 4}},
        "variants": [{"method": "pi", "scale": 2}],
        "progressive": [{"name": "chain", "steps": [{"scale": 2, "finetune_steps": 2}, {"scale": 4}],
                         "recovery": [1]}],
        "finetune": {"batch_size": 2, "micro_batch_size": 2, "warmup_steps": 0},
        "search": {"documents": 1, "population": 4, "iterations": 1, "mutations": 1, "crossovers": 1, "parents": 2},
        "evaluate": {"length_multiples": [1, 2], "passkey": {"enabled": False},
                     "perplexity": {"max_documents": 2}},
        "wandb": {"mode": "disabled"},
    }


def test_no_config_value_reaches_a_shell_unquoted(tmp_path):
    marker = tmp_path / "executed"
    # a space breaks every unquoted path; $(...) runs a command wherever the shell sees it unquoted
    results_dir = f"out dir/r$(touch {marker})"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_experiment(results_dir)))
    proc = snakemake(tmp_path, config)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert not marker.exists()
    out = tmp_path / results_dir / "tiny"
    assert (out / "report.md").exists() and (out / "search" / "chain-x4-recovery" / "factors.json").exists()
    assert {r["variant"] for r in csv.DictReader(open(out / "summary.csv"))} == \
        {"base", "pi-x2", "chain-x2-ft", "chain-x4", "chain-x4-recovery"}

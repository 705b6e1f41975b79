"""Resources sized from a run's benchmark files (`python -m longctx suggest-resources`), on files in
Snakemake's benchmark format with the numbers the embedded default measured on the one-node CI
cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from longctx.config import load_config
from longctx.config.resources import stage_resources
from longctx.config.sizing import JOB_STEP_MB, measure, render

REPO = Path(__file__).resolve().parents[1]


def default_config(resources: dict | None = None) -> dict:
    return load_config(REPO / "config.yaml", {"resources": resources} if resources is not None else None)


HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def test_resources_suggested_from_benchmark_files_load_as_a_config(tmp_path):
    bench = tmp_path / "results" / "austen-tiny" / "benchmarks"
    files = {"tokenizer.tsv": "6.43\t0:00:06\t415.09\t983.16\t303.41\t319.75\t0.01\t0.29\t64.72\t4.45\n",
             "eval/base/perplexity-128.tsv": "12.10\t0:00:12\t548.20\t1500.0\t400.0\t420.0\t0\t0\t95.0\t11.5\n",
             "eval/pi-x4-ft/passkey-1024.tsv": "40.00\t0:00:40\t560.00\t1500.0\t400.0\t420.0\t0\t0\t98.0\t39.2\n",
             "finetune/pi-x4-ft.tsv": "150.0\t0:02:30\t1210.0\t3000.0\t900.0\t950.0\t0\t0\t190.0\t285.0\n"}
    for name, row in files.items():
        (bench / name).parent.mkdir(parents=True, exist_ok=True)
        (bench / name).write_text(HEADER + row)
    measured = measure(bench.parent)
    assert list(measured) == ["tokenizer", "finetune", "evaluate"]
    ev = measured["evaluate"]
    assert ev.jobs == 2 and ev.seconds == 40.0 and ev.max_rss_mb == 560.0 and round(ev.cores, 2) == 0.98
    assert ev.suggestion() == {"runtime": 5, "mem_mb": 1700, "cpus": 1}  # 560 x 1.3 + 900 = 1628 -> 1700
    assert measured["finetune"].suggestion() == {"runtime": 5, "mem_mb": 2500, "cpus": 2}
    assert JOB_STEP_MB == 900
    text = render(measured, {s: stage_resources(default_config(), s) for s in measured})
    assert "| evaluate | 2 | 40.0 | 560 | 0.98 | " in text
    section = yaml.safe_load(text[text.index("resources:"):])["resources"]
    cfg = default_config(section)  # what it prints is a valid resources section
    assert stage_resources(cfg, "evaluate").mem_mb == 1700
    with pytest.raises(ValueError, match="no benchmark files under"):
        measure(tmp_path / "nothing")


def test_suggest_resources_command(tmp_path, capsys):
    from longctx.cli import main

    bench = tmp_path / "benchmarks" / "prepare"
    bench.mkdir(parents=True)
    (bench / "austen-train.tsv").write_text(HEADER + "6.50\t0:00:06\t512.0\t900\t300\t320\t0\t0\t91.0\t5.9\n")
    assert main(["suggest-resources", str(tmp_path), "--config", str(REPO / "config.yaml")]) == 0
    out = capsys.readouterr().out
    assert "prepare: {runtime: 5, mem_mb: 1600, cpus: 1}" in out
    assert main(["suggest-resources", str(tmp_path / "missing")]) == 2

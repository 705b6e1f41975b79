"""Resources sized from measurements: a finished run's benchmark files
(``results/<experiment>/benchmarks/**/*.tsv``, Snakemake's benchmark format: one row per run of
the command with ``s``, ``max_rss`` in MB, ``cpu_time``, ...) turned into a ``resources`` section.

Per stage, over its jobs (``python -m longctx suggest-resources results/<experiment>``):

- ``runtime``: twice the slowest job's wall time, in whole minutes, at least ``MIN_RUNTIME``;
- ``mem_mb``: the largest peak resident memory x ``MEM_HEADROOM``, plus ``JOB_STEP_MB`` for what
  a SLURM job holds besides the command (a benchmark measures the rule's command; the job also
  runs snakemake twice, the batch step and the job step, each about 365 MB of private memory plus
  shared libraries with the workflow's imports: measured on the one-node CI cluster), rounded up
  to 100 MB;
- ``cpus``: the average number of cores the busiest job kept busy (``cpu_time / s``), rounded,
  at least 1 - never more than the job could use, since it ran with what it was given; on a node
  shared with other work it understates what a multi-threaded job (training) can use.

A stage without benchmark files (``report``) is left out; retries still grow a request after a
``TIMEOUT`` or ``OUT_OF_MEMORY`` (``longctx.config.resources``).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

MIN_RUNTIME = 5  # minutes
RUNTIME_HEADROOM = 2.0
MEM_HEADROOM = 1.3
JOB_STEP_MB = 900
# the first folder (or file) under benchmarks/ -> the stage whose resources the rule takes
BENCHMARK_STAGES = {"tokenizer": "tokenizer", "prepare": "prepare", "base_model": "base_model",
                    "finetune": "finetune", "search": "search", "eval": "evaluate"}


class SizingError(ValueError):
    """No benchmark files where they were looked for; the message names the folder."""


@dataclass(frozen=True)
class Measured:
    """One stage's jobs, at their most demanding."""

    stage: str
    jobs: int
    seconds: float  # slowest wall time
    max_rss_mb: float  # largest peak resident memory
    cores: float  # most cores kept busy on average (cpu_time / s)

    def suggestion(self) -> dict:
        return {"runtime": max(MIN_RUNTIME, math.ceil(self.seconds * RUNTIME_HEADROOM / 60)),
                "mem_mb": int(math.ceil((self.max_rss_mb * MEM_HEADROOM + JOB_STEP_MB) / 100) * 100),
                "cpus": max(1, round(self.cores))}


def _number(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def read_benchmark(path) -> list[dict]:
    """The rows of one benchmark file (numbers as floats; ``-`` or missing as None)."""
    with open(path, newline="") as f:
        return [{k: _number(v) for k, v in row.items() if k} for row in csv.DictReader(f, delimiter="\t")]


def measure(experiment_dir) -> dict[str, Measured]:
    """Stage -> its jobs' measurements, from ``<experiment_dir>/benchmarks``."""
    root = Path(experiment_dir) / "benchmarks"
    files = sorted(root.rglob("*.tsv"))
    if not files:
        raise SizingError(f"no benchmark files under {root} (run the experiment first: every rule but the report "
                          f"writes one)")
    rows: dict[str, list[tuple[Path, dict]]] = {}
    for path in files:
        head = path.relative_to(root).parts[0].removesuffix(".tsv")
        stage = BENCHMARK_STAGES.get(head)
        if stage:
            rows.setdefault(stage, []).extend((path, row) for row in read_benchmark(path))
    out = {}
    for stage, found in rows.items():
        timed = [r for _, r in found if r.get("s")]
        out[stage] = Measured(
            stage=stage, jobs=len({p for p, _ in found}),
            seconds=max((r["s"] for r in timed), default=0.0),
            max_rss_mb=max((r.get("max_rss") or 0.0 for _, r in found), default=0.0),
            cores=max(((r.get("cpu_time") or 0.0) / r["s"] for r in timed), default=0.0))
    return {s: out[s] for s in BENCHMARK_STAGES.values() if s in out}


def render(measured: dict[str, Measured], configured: dict | None = None) -> str:
    """A table of what was measured (and asked for, given ``configured``: stage -> StageResources)
    and the ``resources:`` section it suggests, as YAML to paste into a config."""
    head = "| stage | jobs | slowest (s) | peak memory (MB) | cores busy |"
    lines = [head + (" asked for |" if configured else "") + " suggested |",
             "|---|---:|---:|---:|---:|" + ("---|" if configured else "") + "---|"]
    section = {}
    for stage, m in measured.items():
        s = section[stage] = m.suggestion()
        row = f"| {stage} | {m.jobs} | {m.seconds:.1f} | {m.max_rss_mb:.0f} | {m.cores:.2f} |"
        if configured:
            c = configured[stage]
            row += f" {c.runtime} min, {c.mem_mb} MB, {c.cpus} CPU |"
        lines.append(row + f" {s['runtime']} min, {s['mem_mb']} MB, {s['cpus']} CPU |")
    text = yaml.safe_dump({"resources": section}, sort_keys=False, default_flow_style=None)
    return "\n".join(lines) + "\n\n" + text

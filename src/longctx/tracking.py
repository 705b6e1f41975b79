"""Weights & Biases conventions, in one place.

Every job is one run: project from config, group = experiment, job_type = stage, name from
variant and stage, config = the resolved parameters with the same keys in every run
(experiment, stage, model_source, variant, method, scale, length, ...). Mode ``offline`` writes
run files under results/<experiment>/wandb (upload later with ``wandb sync``); ``disabled``
logs nothing. Secrets never go into the run config: only WANDB_API_KEY in the environment is read,
by wandb itself.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

SHARED_KEYS = ("experiment", "stage", "model_source", "model", "variant", "method", "scale", "length", "finetuned")
SECRET_WORDS = ("key", "token", "secret", "password")


def run_config(run: dict, stage: str, variant: dict | None = None, length=None, **extra) -> dict:
    """The run config every job logs: the same keys everywhere, so W&B can group and filter."""
    variant = variant or {}
    out = {
        "experiment": run["experiment"],
        "stage": stage,
        "model_source": run["model_source"],
        "model": run["model"],
        "original_context": run["original_context"],
        "variant": variant.get("name"),
        "method": variant.get("method"),
        "scale": variant.get("scale"),
        "finetuned": variant.get("finetune"),
        "length": length,
        "seed": run["seed"],
    }
    out.update(extra)
    return _scrub(out)


def _scrub(d):
    if isinstance(d, dict):
        return {k: ("<redacted>" if any(w in k.lower() for w in SECRET_WORDS) and isinstance(v, str) else _scrub(v))
                for k, v in d.items()}
    return d


class Tracker:
    """A thin handle on one W&B run (or nothing when disabled)."""

    def __init__(self, run=None):
        self.run = run

    def log(self, metrics: dict, step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def table(self, key: str, columns: list[str], rows: list[list]) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Table(columns=columns, data=rows)})

    def image(self, key: str, path: str | Path) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(str(path))})

    def summary(self, metrics: dict) -> None:
        if self.run is not None:
            self.run.summary.update(metrics)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.finish()


ENV = "LONGCTX_WANDB"


def settings_env(config: dict) -> str:
    """The W&B settings as the environment variable the Snakefile exports to every job.

    Kept out of rule params on purpose: switching W&B on or off must not rerun any job.
    """
    return json.dumps({**config["wandb"], "experiment": config["experiment"],
                       "dir": str(Path(config["results_dir"]) / config["experiment"])})


def start(stage: str, name: str, run_config: dict, job_type: str | None = None) -> Tracker:
    """Start this job's run with the settings the workflow exported (disabled when there are none)."""
    settings = json.loads(os.environ.get(ENV, '{"mode": "disabled"}'))
    if settings["mode"] == "disabled":
        return Tracker(None)
    import wandb

    out_dir = Path(settings["dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(
        project=settings["project"],
        entity=settings.get("entity"),
        group=settings["experiment"],
        job_type=job_type or stage,
        name=name,
        config=run_config,
        tags=[settings["experiment"], stage, *settings.get("tags", [])],
        mode=settings["mode"],
        dir=str(out_dir),
        reinit="finish_previous",
        settings=wandb.Settings(console="off", x_disable_stats=True, x_disable_meta=True),
    )
    return Tracker(run)

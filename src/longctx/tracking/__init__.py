"""Weights & Biases conventions, in one place (docs/wandb.md explains them for users).

Every job is one run:
- project from config (``wandb.project``), group = experiment, job_type = stage (``prepare``,
  ``pretrain`` or ``import``, ``finetune``, ``search``, ``eval-<name>``, ``report``);
- name from model, variant and stage (``run_name``), e.g. ``pretrain|pi-x4-ft|eval-perplexity@512``: one
  name per job of an experiment;
- tags: experiment, stage, method, scale, ``finetuned``/``searched``, plus ``wandb.tags``, and
  ``latest``: a job that runs again (a retry, a rerun) marks its earlier runs ``superseded``
  (``supersede``), so filtering on ``latest`` leaves one run per job;
- config (``run_config``): the same top-level keys in every run (``SHARED_KEYS``; ``None`` where a
  key does not apply), the stage's own settings under ``settings`` and the whole resolved
  experiment config under ``experiment_config``, so W&B can group and filter by method, scale,
  length and stage.

Settings reach jobs through the ``LONGCTX_WANDB`` environment variable (``settings_env``), which
the workflow exports: never through rule params, so switching W&B on or off reruns no job.
Mode ``offline`` writes run files under results/<experiment>/wandb (``wandb sync`` uploads them
later; ``longctx.tracking.offline`` reads them back), ``online`` needs WANDB_API_KEY in the
environment (read by wandb itself, never by us), ``disabled`` logs nothing. Nothing that looks like
a secret goes into a run config.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from longctx.config.experiment import scale_text, variant_name
from longctx.rope.registry import length_at

log = logging.getLogger(__name__)

ENV = "LONGCTX_WANDB"
SHARED_KEYS = ("experiment", "stage", "model_source", "model", "original_context", "variant", "method", "scale",
               "finetuned", "searched", "rope_params", "length", "target_length", "dataset", "seed", "settings")
# key names whose string values are withheld from run configs (word-wise: "max_new_tokens" is fine)
_SECRET_KEY = re.compile(r"(^|[_\-.])(api_?key|key|token|secret|password|passwd|auth|credentials?)($|[_\-.])",
                         re.IGNORECASE)
_SECRET_VALUE = re.compile(r"^(hf_[A-Za-z0-9]{20,}|wandb_v\d+_\S+|sk-[A-Za-z0-9_\-]{20,})$")


# --- what a run is called and carries ------------------------------------------------------------


def _short_model(model: str) -> str:
    return Path(str(model).rstrip("/")).name or str(model)


def variant_label(variant: dict | None) -> str:
    """``<method>-x<scale>`` plus ``-search`` / ``-ft``; ``base`` for the unextended model."""
    if not variant or variant.get("method") in (None, "none") and float(variant.get("scale") or 1) == 1:
        return "base"
    return variant_name(variant["method"], variant["scale"], bool(variant.get("search")), bool(variant.get("finetune")))


def variant_stage(variant: dict) -> str:
    """How a variant's weights or factors were obtained: the ``stage`` column of summary.csv and eval tables."""
    variant = _plain(variant)
    if variant.get("instruct_of"):
        return "instruction-tuned"
    if variant.get("finetune") and variant.get("search"):
        return "searched+finetuned"
    return "finetuned" if variant.get("finetune") else ("searched" if variant.get("search") else "none")


def run_config(run: dict, stage: str, variant: dict | None = None, length=None, dataset: str | None = None,
               **settings) -> dict:
    """The run config every job logs: ``SHARED_KEYS`` at the top, the stage's settings below them."""
    variant = _plain(variant) or {}
    run = _plain(run)
    scale = variant.get("scale")
    out = {
        "experiment": run["experiment"],
        "stage": stage,
        "model_source": run["model_source"],
        "model": run["model"],
        "original_context": run["original_context"],
        "variant": variant.get("name"),
        "method": variant.get("method"),
        "scale": scale,
        "finetuned": variant.get("finetune"),
        "searched": variant.get("search"),
        "rope_params": variant.get("params"),
        "length": length,
        "target_length": length_at(scale, run["original_context"]) if scale is not None else None,
        "dataset": dataset,
        "seed": run["seed"],
        "settings": settings,
    }
    return scrub(out)


def _plain(x):
    """A ``Variant`` or ``RunInfo`` as the dict it stands for (dicts pass through)."""
    return x.to_dict() if hasattr(x, "to_dict") else x


def run_name(config: dict) -> str:
    """``<model>|<variant>|<stage>[@<length>]`` from a ``run_config``: one name per job.

    The variant is its name in the experiment (``longrope-prog-x8-recovery``; ``<method>-x<scale>
    [-search][-ft]`` when a config has none); two variants of one method and scale (a progressive
    chain's step and its recovery) differ by it. The length is the evaluation length (eval stages),
    a search length other than the target (a recovery search, one run per length), or the dataset
    and split (prepare).
    """
    variant = {"method": config.get("method"), "scale": config.get("scale"), "search": config.get("searched"),
               "finetune": config.get("finetuned")} if config.get("method") else None
    label = config.get("variant") or (variant_label(variant) if variant else None)
    parts = [_short_model(config["model"]), label, config["stage"]]
    name = "|".join(p for p in parts if p)
    length = config.get("length")
    if length is not None and config["stage"].startswith("eval-"):
        name += f"@{length}"  # training and search run at the target length the scale gives
    elif length is not None and config["stage"] == "search" and length != config.get("target_length"):
        name += f"@{length}"
    elif config["stage"] == "prepare":
        name += "@" + "/".join(str(x) for x in (config.get("dataset"), (config.get("settings") or {}).get("split")) if x)
    return name


LATEST, SUPERSEDED = "latest", "superseded"


def run_tags(config: dict, extra=()) -> list[str]:
    tags = [config["experiment"], config["stage"], LATEST]
    if config.get("method"):
        tags += [f"method:{config['method']}", f"scale:{scale_text(config['scale'])}"]
        tags += ["finetuned"] if config.get("finetuned") else []
        tags += ["searched"] if config.get("searched") else []
    return list(dict.fromkeys([*tags, *extra]))  # W&B limits a tag to 64 characters; ours are short


def scrub(d):
    """Withhold string values under secret-looking keys, and values that look like known tokens."""
    if isinstance(d, dict):
        return {k: ("<redacted>" if isinstance(v, str) and _SECRET_KEY.search(str(k)) else scrub(v))
                for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [scrub(v) for v in d]
    if isinstance(d, str) and _SECRET_VALUE.match(d):
        return "<redacted>"
    return d


# --- the handle a stage logs through -------------------------------------------------------------


class Tracker:
    """A thin handle on one W&B run (or nothing when disabled)."""

    def __init__(self, run=None):
        self.run = run

    @property
    def enabled(self) -> bool:
        return self.run is not None

    def log(self, metrics: dict, step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def table(self, key: str, columns: list[str], rows: list[list]) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Table(columns=columns, data=rows)})

    def line_series(self, key: str, series: dict[str, list[tuple]], title: str, xname: str) -> None:
        """One W&B line chart: ``series`` maps a line's name to its (x, y) points."""
        if self.run is not None and series:
            import wandb

            names = list(series)
            self.run.log({key: wandb.plot.line_series(
                xs=[[x for x, _ in series[n]] for n in names], ys=[[y for _, y in series[n]] for n in names],
                keys=names, title=title, xname=xname)})

    def image(self, key: str, path: str | Path, caption: str | None = None) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(str(path), caption=caption)})

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


EVAL_TABLE_COLUMNS = ["variant", "method", "scale", "stage", "dataset", "length", "metric", "value"]


def log_evaluation(tracker: Tracker, result: dict, variant) -> None:
    """An evaluation run's results: summary metrics, its metrics as a W&B Table (the rows summary.csv
    gets), and its trials (passkey: key, depth, answer, correct) as a second table."""
    if not tracker.enabled:
        return
    variant = _plain(variant)
    metrics = {k: v for k, v in result["metrics"].items() if isinstance(v, (int, float))}
    tracker.run.config.update({"dataset": result.get("dataset")}, allow_val_change=True)
    tracker.summary({**metrics, "length": result["length"], **{k: "diverged" for k in result.get("diverged", ())}})
    tracker.table(f"eval/{result['eval']}", EVAL_TABLE_COLUMNS,
                  [[variant["name"], variant["method"], variant["scale"], variant_stage(variant), result.get("dataset"),
                    result["length"], k, v] for k, v in metrics.items()])
    trials = result.get("trials")
    if isinstance(trials, list) and trials and all(isinstance(t, dict) for t in trials):
        columns = list(dict.fromkeys(k for t in trials for k in t))
        tracker.table(f"eval/{result['eval']}/trials", ["length", *columns],
                      [[result["length"], *[t.get(c) for c in columns]] for t in trials])


def settings_env(config: dict) -> str:
    """The W&B settings as the environment variable the Snakefile exports to every job.

    Kept out of rule params on purpose: switching W&B on or off must not rerun any job. Carries
    the resolved experiment config too, which every run logs as ``experiment_config``.
    """
    resolved = {k: v for k, v in config.items() if k != "wandb"}
    return json.dumps({**config["wandb"], "experiment": config["experiment"],
                       "dir": str(Path(config["results_dir"]) / config["experiment"]),
                       "experiment_config": scrub(resolved)}, default=str)


def settings() -> dict:
    """This job's W&B settings from the environment; mode ``disabled`` when the workflow set none."""
    raw = os.environ.get(ENV)
    if not raw:
        return {"mode": "disabled"}
    try:
        out = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"environment variable {ENV} is not valid JSON: {e}") from None
    if out.get("mode") not in ("offline", "online", "disabled"):
        raise ValueError(f"{ENV}: wandb.mode must be offline, online or disabled, got {out.get('mode')!r}")
    return out


def start(stage: str, name: str | None, run_config: dict, job_type: str | None = None) -> Tracker:
    """Start this job's run with the settings the workflow exported (disabled when there are none).

    ``name=None`` names the run by the convention (``run_name``).
    """
    s = settings()
    if s["mode"] == "disabled":
        return Tracker(None)
    import wandb

    out_dir = Path(s["dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    config = {**run_config, "experiment_config": s.get("experiment_config")}
    name = name or run_name(run_config)
    supersede(s, name)
    run = wandb.init(
        project=s["project"],
        entity=s.get("entity"),
        group=s["experiment"],
        job_type=job_type or stage,
        name=name,
        config=config,
        tags=run_tags(run_config, s.get("tags", [])),
        mode=s["mode"],
        dir=str(out_dir),
        reinit="finish_previous",
        # no console capture, system metrics or environment metadata: nothing beyond what we log
        settings=wandb.Settings(console="off", x_disable_stats=True, x_disable_meta=True, save_code=False),
    )
    return Tracker(run)


def supersede(s: dict, name: str) -> list:
    """Mark the earlier runs of the job about to log as ``name`` superseded (a job that runs again:
    a retry after a kill or a time limit, a rerun after a change). Offline, their folders move from
    ``<dir>/wandb/`` to ``<dir>/wandb/superseded/`` (``wandb sync <dir>/wandb/offline-run-*`` then
    uploads the latest runs only; docs/wandb.md); online, their tag ``latest`` becomes ``superseded``
    through the W&B API, where it answers (a warning otherwise: the new run is still logged)."""
    if s["mode"] == "offline":
        return supersede_offline(Path(s["dir"]) / "wandb", s["project"], s["experiment"], name)
    try:
        import wandb

        api = wandb.Api(timeout=20)
        path = f"{s.get('entity') or api.default_entity}/{s['project']}"
        earlier = list(api.runs(path, filters={"group": s["experiment"], "display_name": name,
                                               "tags": {"$in": [LATEST]}}))
        for r in earlier:
            r.tags = [t for t in r.tags if t != LATEST] + [SUPERSEDED]
            r.update()
        return earlier
    except Exception as e:  # the W&B server's answer must not stop the job
        log.warning("W&B: could not mark the earlier runs of %s superseded: %s", name, e)
        return []


def job(run: dict, stage: str, variant: dict | None = None, length=None, dataset: str | None = None,
        **stage_settings) -> Tracker:
    """``start`` with everything by the convention: config, name, job_type and tags from the job's facts."""
    return start(stage, None, run_config(run, stage, variant, length, dataset, **stage_settings))
from longctx.tracking.offline import (  # noqa: E402,F401
    OfflineRun,
    latest_runs,
    offline_runs,
    read_offline_run,
    supersede_offline,
)

"""Weights & Biases conventions, in one place (docs/wandb.md explains them for users).

Every job is one run:
- project from config (``wandb.project``), group = experiment, job_type = stage (``prepare``,
  ``pretrain`` or ``import``, ``finetune``, ``search``, ``eval-<name>``, ``report``);
- name from model, method, scale and stage (``run_name``), e.g. ``pretrain|pi-x4-ft|eval-perplexity@512``;
- tags: experiment, stage, method, scale, ``finetuned``/``searched``, plus ``wandb.tags``;
- config (``run_config``): the same top-level keys in every run (``SHARED_KEYS``; ``None`` where a
  key does not apply), the stage's own settings under ``settings`` and the whole resolved
  experiment config under ``experiment_config``, so W&B can group and filter by method, scale,
  length and stage.

Settings reach jobs through the ``LONGCTX_WANDB`` environment variable (``settings_env``), which
the workflow exports: never through rule params, so switching W&B on or off reruns no job.
Mode ``offline`` writes run files under results/<experiment>/wandb (``wandb sync`` uploads them
later; ``read_offline_run`` reads them back here), ``online`` needs WANDB_API_KEY in the
environment (read by wandb itself, never by us), ``disabled`` logs nothing. Nothing that looks like
a secret goes into a run config.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

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


def _scale_text(scale) -> str:
    scale = float(scale)
    return str(int(scale)) if scale.is_integer() else f"{scale:g}"


def variant_label(variant: dict | None) -> str:
    """``<method>-x<scale>`` plus ``-search`` / ``-ft``; ``base`` for the unextended model."""
    if not variant or variant.get("method") in (None, "none") and float(variant.get("scale") or 1) == 1:
        return "base"
    return (f"{variant['method']}-x{_scale_text(variant['scale'])}" + ("-search" if variant.get("search") else "")
            + ("-ft" if variant.get("finetune") else ""))


def variant_stage(variant: dict) -> str:
    """How a variant's weights or factors were obtained: the ``stage`` column of summary.csv and eval tables."""
    if variant.get("finetune") and variant.get("search"):
        return "searched+finetuned"
    return "finetuned" if variant.get("finetune") else ("searched" if variant.get("search") else "none")


def run_config(run: dict, stage: str, variant: dict | None = None, length=None, dataset: str | None = None,
               **settings) -> dict:
    """The run config every job logs: ``SHARED_KEYS`` at the top, the stage's settings below them."""
    variant = variant or {}
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
        "target_length": int(round(scale * run["original_context"])) if scale is not None else None,
        "dataset": dataset,
        "seed": run["seed"],
        "settings": settings,
    }
    return scrub(out)


def run_name(config: dict) -> str:
    """``<model>|<method>-x<scale>[-search][-ft]|<stage>[@<length>]`` from a ``run_config``.

    The length is the evaluation length (eval stages) or the dataset and split (prepare).
    """
    variant = {"method": config.get("method"), "scale": config.get("scale"), "search": config.get("searched"),
               "finetune": config.get("finetuned")} if config.get("method") else None
    parts = [_short_model(config["model"]), variant_label(variant) if variant else None, config["stage"]]
    name = "|".join(p for p in parts if p)
    if config.get("length") is not None and config["stage"].startswith("eval-"):
        name += f"@{config['length']}"  # training and search run at the target length the scale gives
    elif config["stage"] == "prepare":
        name += "@" + "/".join(str(x) for x in (config.get("dataset"), (config.get("settings") or {}).get("split")) if x)
    return name


def run_tags(config: dict, extra=()) -> list[str]:
    tags = [config["experiment"], config["stage"]]
    if config.get("method"):
        tags += [f"method:{config['method']}", f"scale:{_scale_text(config['scale'])}"]
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


def log_evaluation(tracker: Tracker, result: dict, variant: dict) -> None:
    """An evaluation run's results: summary metrics, its metrics as a W&B Table (the rows summary.csv
    gets), and its trials (passkey: key, depth, answer, correct) as a second table."""
    if not tracker.enabled:
        return
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
    run = wandb.init(
        project=s["project"],
        entity=s.get("entity"),
        group=s["experiment"],
        job_type=job_type or stage,
        name=name or run_name(run_config),
        config=config,
        tags=run_tags(run_config, s.get("tags", [])),
        mode=s["mode"],
        dir=str(out_dir),
        reinit="finish_previous",
        # no console capture, system metrics or environment metadata: nothing beyond what we log
        settings=wandb.Settings(console="off", x_disable_stats=True, x_disable_meta=True, save_code=False),
    )
    return Tracker(run)


def job(run: dict, stage: str, variant: dict | None = None, length=None, dataset: str | None = None,
        **stage_settings) -> Tracker:
    """``start`` with everything by the convention: config, name, job_type and tags from the job's facts."""
    return start(stage, None, run_config(run, stage, variant, length, dataset, **stage_settings))


# --- reading offline runs back -------------------------------------------------------------------
# wandb 0.31 writes each offline run as a LevelDB-style log of protobuf records (run-<id>.wandb)
# and ships no Python reader for it; the record schema is wandb's own (wandb.proto).

_BLOCK, _HEADER = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:_HEADER])
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path}: not a W&B run file")
    i, chunks = _HEADER, []
    while i + _HEADER <= len(data):
        if _BLOCK - i % _BLOCK < _HEADER:  # a block's tail too short for a header is padding
            i += _BLOCK - i % _BLOCK
            continue
        crc, n, kind = struct.unpack("<IHB", data[i:i + _HEADER])
        chunk = data[i + _HEADER:i + _HEADER + n]
        i += _HEADER + n
        if kind == 0 and n == 0:
            continue
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise ValueError(f"{path}: corrupt record at byte {i - n - _HEADER}")
        chunks = [chunk] if kind in (_FULL, _FIRST) else chunks + [chunk]
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(b"".join(chunks))
            yield record


def _item_key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


@dataclass
class OfflineRun:
    """What one offline run logged: its identity, config, per-step history and summary."""

    path: Path
    id: str = ""
    project: str = ""
    group: str = ""
    job_type: str = ""
    name: str = ""
    tags: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    def table(self, key: str) -> list[dict]:
        """The rows of the last W&B Table logged under ``key``, as dicts."""
        for row in reversed(self.history):
            value = row.get(key)
            if isinstance(value, dict) and value.get("_type") == "table-file":
                table = json.loads((self.path / "files" / value["path"]).read_text())
                return [dict(zip(table["columns"], r)) for r in table["data"]]
        raise KeyError(f"{self.path}: no table logged under {key!r}")

    def media(self, key: str) -> Path:
        """The file of the last image logged under ``key``."""
        for row in reversed(self.history):
            value = row.get(key)
            if isinstance(value, dict) and "path" in value:
                return self.path / "files" / value["path"]
        raise KeyError(f"{self.path}: no media logged under {key!r}")


def read_offline_run(run_dir) -> OfflineRun:
    """Read an offline run folder (``offline-run-*``) back from its ``.wandb`` file."""
    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no run-*.wandb file")
    out = OfflineRun(path=run_dir)
    for record in _records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            out.id, out.project, out.group, out.job_type = r.run_id, r.project, r.run_group, r.job_type
            out.name, out.tags = r.display_name, list(r.tags)
            for u in r.config.update:
                _set_nested(out.config, list(u.nested_key) or [u.key], json.loads(u.value_json))
        elif kind == "config":
            for u in record.config.update:
                _set_nested(out.config, list(u.nested_key) or [u.key], json.loads(u.value_json))
        elif kind == "history":
            row = {}
            for item in record.history.item:
                _set_nested(row, list(item.nested_key) or [item.key], json.loads(item.value_json))
            out.history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                out.summary[_item_key(item)] = json.loads(item.value_json)
    out.config.pop("_wandb", None)
    return out


def _set_nested(row: dict, keys: list[str], value) -> None:
    # W&B splits a logged dict value (a table's reference) into one item per leaf: rebuild it
    head, *rest = keys
    if not rest:
        row[head] = value
    else:
        _set_nested(row.setdefault(head, {}), rest, value)


def offline_runs(wandb_dir) -> list[OfflineRun]:
    """Every offline run under a folder (e.g. results/<experiment>/wandb), oldest first."""
    return [read_offline_run(p) for p in sorted(Path(wandb_dir).glob("offline-run-*")) if p.is_dir()]

"""The report's data: every metric of every evaluation JSON as one row of summary.csv (long form),
and the conventions tables and plots share (which way is better, the order of metrics, numbers as
text)."""

from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path

from longctx.artifacts import atomic_path, read_json
from longctx.tracking import variant_stage

log = logging.getLogger(__name__)

COLUMNS = ["experiment", "model", "variant", "method", "scale", "stage", "eval", "dataset", "length", "metric",
           "value", "source", "status"]
DIVERGED = "diverged"
_NOT_SETTINGS = {"eval", "length", "variant", "rope", "seconds", "metrics", "dataset", "fingerprint"}


class ReportError(ValueError):
    """A result file cannot go into the report; the message names it."""


def load_results(result_files) -> list[tuple[str, dict]]:
    out = []
    for path in result_files:
        r = read_json(path)
        missing = [k for k in ("eval", "length", "variant") if k not in r]
        if missing:
            raise ReportError(f"{path}: evaluation result lacks {', '.join(missing)}")
        if not isinstance(r.get("metrics"), dict) or not r["metrics"]:
            log.warning("%s: no metrics; left out of the tables", path)
            continue
        out.append((str(path), r))
    return out


def collect(results: list[tuple[str, dict]], variants: list[dict], experiment: str, model: str,
            dataset: str) -> list[dict]:
    """One row per (variant, eval, length, metric); ``dataset`` names the perplexity corpus."""
    by_name = {v["name"]: v for v in variants}
    rows = []
    for path, r in results:
        if r["variant"] not in by_name:
            raise ReportError(f"{path}: variant {r['variant']!r} is not one of this experiment's "
                              f"({', '.join(by_name)})")
        v = by_name[r["variant"]]
        ds = r.get("dataset") or (dataset if r["eval"] == "perplexity" else r["eval"])
        diverged = set(r.get("diverged") or ())
        for metric, value in r["metrics"].items():
            if metric in diverged:
                value, status = None, DIVERGED
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                status = "ok"
            else:
                continue
            rows.append({"experiment": experiment, "model": model, "variant": v["name"], "method": v["method"],
                         "scale": v["scale"], "stage": variant_stage(v), "eval": r["eval"], "dataset": ds,
                         "length": int(r["length"]), "metric": metric, "value": value, "source": path,
                         "status": status})
    return rows


def write_csv(rows: list[dict], path) -> None:
    """The rows as CSV; each ``source`` relative to the file's folder (summary.csv: to the experiment's
    folder, ``eval/<variant>/<eval>-<length>.json``), so the results can move as a whole."""
    here = Path(path).parent
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows({**r, "source": os.path.relpath(r["source"], here)} if r.get("source") else r for r in rows)


def _anchored(source: str, here: Path, experiment: str) -> str:
    """A row's ``source`` as a path from the working directory: relative ones are relative to the CSV's
    folder; an absolute one that is not there (written by an older version, on another machine) is
    looked for at its part after ``/<experiment>/`` beside the CSV."""
    if not source:
        return source
    if not os.path.isabs(source):
        return os.path.normpath(os.path.join(here, source))
    parts = Path(source).parts
    if not os.path.exists(source) and experiment in parts:
        moved = here.joinpath(*parts[len(parts) - parts[::-1].index(experiment):])
        if moved.exists():
            return str(moved)
    return source


def read_csv(path) -> list[dict]:
    """The rows of a summary.csv (or compare.csv), each ``source`` a path from the working directory."""
    path = Path(path)
    if not path.exists():
        raise ReportError(f"{path} does not exist: build that experiment's report first")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["length"], r["scale"] = int(r["length"]), float(r["scale"])
        r["value"] = float(r["value"]) if r["value"] not in ("", None) else None
        r["status"] = r.get("status") or "ok"  # summary.csv files written before the status column
        r["source"] = _anchored(r.get("source") or "", path.parent, r["experiment"])
    return rows


def lower_is_better(metric: str) -> bool:
    return any(word in metric.lower() for word in ("perplexity", "ppl", "nll", "loss", "error"))


def metrics_by_eval(rows: list[dict]) -> dict[str, list[str]]:
    """Evaluation -> its metrics, headline first (the order of the JSON's ``metrics``)."""
    out: dict[str, list[str]] = {}
    for r in rows:
        names = out.setdefault(r["eval"], [])
        if r["metric"] not in names:
            names.append(r["metric"])
    from longctx.evaluate import entries  # the registry's order: the papers' main tables lead

    known = list(entries())
    order = [e for e in known if e in out] + sorted(e for e in out if e not in known)  # unknown ones by name
    return {e: out[e] for e in order}


def fmt(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) >= 100):
        return str(int(x))
    return f"{x:.2f}" if abs(x) < 1e4 else f"{x:.3g}"


def title(eval_name: str) -> str:
    return {"perplexity": "Perplexity", "passkey": "Passkey retrieval"}.get(eval_name, eval_name.replace("_", " "))

"""The report's W&B run: summary.csv as a table, each paper-style table, line charts and figures."""

from __future__ import annotations

from longctx.report.summary import COLUMNS, DIVERGED, fmt
from longctx.report.tables import table_records


def log_to_wandb(tracker, report: Report, variants: list[dict]) -> None:
    """The report run: summary.csv as a table, each paper-style table, line charts and the figures."""
    if not tracker.enabled:
        return
    tracker.table("report/summary", COLUMNS, [[r[c] for c in COLUMNS] for r in report.rows])
    summary = {}
    for t in report.tables:
        columns, data = table_records(t, variants)
        tracker.table(f"report/{t.eval}/{t.metric}", columns, data)
        series = {v["name"]: [(n, t.cells[(v["name"], n)]["value"]) for n in t.lengths
                              if (v["name"], n) in t.cells and t.cells[(v["name"], n)]["value"] is not None]
                  for v in variants}
        tracker.line_series(f"report/{t.eval}/{t.metric}_by_length", {k: s for k, s in series.items() if s},
                            f"{t.metric} by length", "length")
        for (variant, n), c in t.cells.items():
            summary[f"{t.eval}/{t.metric}/{variant}/{n}"] = c["value"] if c["value"] is not None else DIVERGED
        for name, column in t.extra.items():
            for variant, (value, _) in column.items():
                summary[f"{t.eval}/{name}/{variant}"] = value
    papers = [[t.eval, t.metric, v, p.source, p.label, p.url,
               ", ".join(f"{n}: {fmt(x)}" for n, x in sorted(p.values.items())) or f"k_max {p.k_max}"]
              for t in report.tables for v, ps in t.papers.items() for p in ps]
    tracker.table("report/papers", ["eval", "metric", "variant", "paper", "row", "url", "values"], papers)
    for key, path in report.plots.items():
        tracker.image(key, path)
    tracker.summary(summary)

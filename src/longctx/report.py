"""The local report: summary.csv in long form, report.md with tables like the papers', plots.

Every number in the report links to the JSON artifact it came from.
"""

from __future__ import annotations

import csv
import math
import os
from collections import defaultdict
from pathlib import Path

from longctx.io import atomic_path, read_json

COLUMNS = ["experiment", "model", "variant", "method", "scale", "stage", "eval", "dataset", "length", "metric",
           "value", "source"]


def collect(result_files, variants: list[dict], experiment: str, model: str, dataset: str) -> list[dict]:
    """One row per (variant, eval, length, metric) from the evaluation JSONs."""
    by_name = {v["name"]: v for v in variants}
    rows = []
    for path in result_files:
        r = read_json(path)
        v = by_name[r["variant"]]
        stage = "finetuned" if v["finetune"] else ("searched" if v["search"] else "none")
        for metric, value in r["metrics"].items():
            rows.append({"experiment": experiment, "model": model, "variant": v["name"], "method": v["method"],
                         "scale": v["scale"], "stage": stage, "eval": r["eval"],
                         "dataset": dataset if r["eval"] == "perplexity" else r["eval"], "length": r["length"],
                         "metric": metric, "value": value, "source": str(path)})
    return rows


def write_csv(rows: list[dict], path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.2f}" if abs(x) < 1e4 else f"{x:.3g}"
    return str(x)


def table(rows: list[dict], eval_name: str, metric: str, variants: list[dict], rel_to: Path) -> str:
    """Markdown table: a row per variant, a column per length; each cell links to its artifact."""
    cells = {(r["variant"], r["length"]): r for r in rows if r["eval"] == eval_name and r["metric"] == metric}
    if not cells:
        return ""
    lengths = sorted({length for _, length in cells})
    head = "| variant | method | scale | stage | " + " | ".join(str(n) for n in lengths) + " |"
    out = [head, "|" + "---|" * (4 + len(lengths))]
    for v in variants:
        if not any((v["name"], n) in cells for n in lengths):
            continue
        stage = "fine-tuned" if v["finetune"] else ("searched" if v["search"] else "-")
        row = [v["name"], v["method"], _fmt(v["scale"]), stage]
        for n in lengths:
            c = cells.get((v["name"], n))
            row.append(f"[{_fmt(c['value'])}]({os.path.relpath(c['source'], rel_to)})" if c else "-")
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


def plot_perplexity(rows: list[dict], path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = defaultdict(list)
    for r in rows:
        if r["eval"] == "perplexity" and r["metric"] == "perplexity":
            series[r["variant"]].append((r["length"], r["value"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in sorted(series.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("evaluation length (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_report(result_files, variants: list[dict], experiment: str, model: str, dataset: str,
                 original_context: int, out_md, out_csv, out_plot) -> list[dict]:
    rows = collect(result_files, variants, experiment, model, dataset)
    write_csv(rows, out_csv)
    plot_perplexity(rows, out_plot, f"{experiment}: perplexity by length ({dataset})")
    here = Path(out_md).parent
    parts = [
        f"# {experiment}",
        "",
        f"Base model: `{model}`, original context L = {original_context} tokens. "
        f"Every number links to the JSON it came from; all rows are in [summary.csv]({os.path.relpath(out_csv, here)}).",
        "",
        f"## Perplexity by length ({dataset}, lower is better)",
        "",
        table(rows, "perplexity", "perplexity", variants, here) or "_not run_",
        "",
        f"![perplexity by length]({os.path.relpath(out_plot, here)})",
        "",
        "## Passkey retrieval accuracy by length",
        "",
        table(rows, "passkey", "accuracy", variants, here) or "_not run_",
        "",
    ]
    with atomic_path(out_md) as tmp:
        tmp.write_text("\n".join(parts))
    return rows

"""Several experiments side by side (``results/compare.md``): one table per (evaluation, metric), a
row per (experiment, variant), a column per length, from each experiment's summary.csv."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import os

from longctx.artifacts import atomic_path
from longctx.report.summary import fmt, lower_is_better, metrics_by_eval, read_csv, title, write_csv
from longctx.report.tables import _cell


def compare(summary_files, out_md, out_csv=None) -> list[dict]:
    """One table per (evaluation, metric): a row per (experiment, variant), a column per length."""
    out_md = Path(out_md)
    here = out_md.parent
    rows = [r for path in summary_files for r in read_csv(path)]
    experiments = list(dict.fromkeys(r["experiment"] for r in rows))
    parts = [f"# Comparison: {', '.join(experiments)}", "",
             "Each cell links to the evaluation JSON it came from; sources: "
             + ", ".join(f"[{Path(p).parent.name}/summary.csv]({os.path.relpath(p, here)})" for p in summary_files)
             + ". The best value per length is in bold.", ""]
    for eval_name, metrics in metrics_by_eval(rows).items():
        parts += [f"## {title(eval_name)}", ""]
        for k, metric in enumerate(metrics):
            cells = {(r["experiment"], r["variant"], r["length"]): r for r in rows
                     if r["eval"] == eval_name and r["metric"] == metric}
            lengths = sorted({n for _, _, n in cells})
            keys = list(dict.fromkeys((e, v) for e, v, _ in cells))
            values = defaultdict(list)
            for (_, _, n), c in cells.items():
                if c["value"] is not None:
                    values[n].append(c["value"])
            pick = min if lower_is_better(metric) else max
            best = {n: pick(vs) if len(set(vs)) > 1 else None for n, vs in values.items()}
            table = ["| experiment | model | variant | method | scale | stage | dataset | " + " | ".join(map(str, lengths)) + " |",
                     "|" + "---|" * (7 + len(lengths))]
            for e, v in keys:
                first = next(c for (e2, v2, _), c in cells.items() if (e2, v2) == (e, v))
                row = [e, f"`{first['model']}`", v, first["method"], fmt(first["scale"]), first["stage"], first["dataset"]]
                for n in lengths:
                    c = cells.get((e, v, n))
                    row.append(_cell(c["value"], c["source"], here, c["value"] is not None and c["value"] == best.get(n))
                               if c else "-")
                table.append("| " + " | ".join(row) + " |")
            direction = "lower is better" if lower_is_better(metric) else "higher is better"
            block = [f"**{metric}** ({direction})", "", *table, ""]
            if k == 1:
                parts += [f"<details><summary>Other metrics: {', '.join(metrics[1:])}</summary>", ""]
            parts += block
            if k and k == len(metrics) - 1:
                parts += ["</details>", ""]
    with atomic_path(out_md) as tmp:
        tmp.write_text("\n".join(parts))
    if out_csv:
        write_csv(rows, out_csv)
    return rows

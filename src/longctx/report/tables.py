"""Tables laid out like the papers': a row per variant (the papers' own rows beneath, where the
setting matches), a column per length, every number linking to the JSON it came from."""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

from longctx.report.paper_numbers import Setting, matches
from longctx.report.summary import DIVERGED, _NOT_SETTINGS, fmt, lower_is_better
from longctx.tracking import variant_stage


@dataclass
class Table:
    """A table laid out like the papers': a row per variant (papers' rows beneath), a column per length."""

    eval: str
    metric: str
    lengths: list[int]
    cells: dict  # (variant, length) -> summary row
    extra: dict = field(default_factory=dict)  # column name -> {variant: (value, source)}
    papers: dict = field(default_factory=dict)  # variant -> [PaperRow]

    def best(self, length: int):
        """The best value at ``length``; None when there is nothing to single out (one value, or all equal)."""
        values = [c["value"] for (v, n), c in self.cells.items() if n == length and c["value"] is not None]
        if len(set(values)) < 2:
            return None
        return min(values) if lower_is_better(self.metric) else max(values)


def k_max_column(table: Table, variants: list[dict], options: dict) -> dict:
    """PI's k_max per variant over the tested lengths (>= 20% accuracy at every length up to k)."""
    from longctx.evaluate.passkey import k_max

    out = {}
    for v in variants:
        acc = {n: table.cells[(v["name"], n)]["value"] for n in table.lengths
               if (v["name"], n) in table.cells and table.cells[(v["name"], n)]["value"] is not None}
        if acc:
            k = k_max(acc)
            # link the length that decides k_max: the last one passed, else the first one failed
            decided = k if k in acc else min(acc)
            out[v["name"]] = (k, table.cells[(v["name"], decided)]["source"])
    return out


def effective_length_column(table: Table, variants: list[dict], options: dict) -> dict:
    """RULER's effective length per variant: the longest tested length up to which the average stays at
    or above the threshold (``report.effective_length_threshold``)."""
    from longctx.evaluate.ruler import effective_length

    threshold = options.get("effective_length_threshold", 85.6)
    out = {}
    for v in variants:
        avg = {n: table.cells[(v["name"], n)]["value"] for n in table.lengths
               if (v["name"], n) in table.cells and table.cells[(v["name"], n)]["value"] is not None}
        if avg:
            best = effective_length(avg, threshold)
            decided = best if best in avg else min(avg)  # the length that decides it, linked
            out[v["name"]] = (best, table.cells[(v["name"], decided)]["source"])
    return out


@dataclass(frozen=True)
class ExtraColumn:
    """A column computed from a table's cells across lengths, and the sentence that explains it."""

    compute: Callable  # (table, variants, options) -> {variant: (value, source file)}
    note: Callable  # (options) -> str


# extra columns per (eval, headline metric)
EXTRA_COLUMNS = {
    ("passkey", "accuracy"): {"k_max": ExtraColumn(k_max_column, lambda options: (
        "k_max: PI's measure over the lengths tested here, the largest length such that every tested length up "
        "to it reaches 20% accuracy."))},
    ("ruler", "average"): {"effective length": ExtraColumn(effective_length_column, lambda options: (
        f"effective length: RULER's, the longest tested length up to which the average over its tasks stays at or "
        f"above {options.get('effective_length_threshold', 85.6):g} (report.effective_length_threshold; RULER's "
        f"threshold, 85.6, is Llama-2-7B's score at 4k); 0 when no tested length reaches it."))},
}


def build_table(rows, eval_name, metric, variants, setting: Setting | None, options: dict | None = None) -> Table | None:
    cells = {(r["variant"], r["length"]): r for r in rows if r["eval"] == eval_name and r["metric"] == metric}
    if not cells:
        return None
    table = Table(eval_name, metric, sorted({n for _, n in cells}), cells)
    for name, column in EXTRA_COLUMNS.get((eval_name, metric), {}).items():
        table.extra[name] = column.compute(table, variants, options or {})
    if setting is not None:
        for v in variants:
            if not any((v["name"], n) in cells for n in table.lengths):
                continue
            found = matches(setting, v, eval_name, metric, table.lengths)
            found += [p for name in table.extra for p in matches(setting, v, eval_name, name)]
            if found:
                table.papers[v["name"]] = found
    return table


def _cell(value, source, rel_to, bold=False) -> str:
    text = f"[{fmt(value) if value is not None else DIVERGED}]({os.path.relpath(source, rel_to)})"
    return f"**{text}**" if bold else text


def _paper_value(value) -> str:
    return f"*{fmt(value)}*" if value is not None else "-"


def table_markdown(table: Table, variants: list[dict], rel_to) -> str:
    lengths = table.lengths
    head = ["variant", "method", "scale", "stage", *map(str, lengths), *table.extra]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = {n: table.best(n) for n in lengths}
    for v in variants:
        if not any((v["name"], n) in table.cells for n in lengths):
            continue
        row = [v["name"], v["method"], fmt(float(v["scale"])), variant_stage(v)]
        for n in lengths:
            c = table.cells.get((v["name"], n))
            row.append(_cell(c["value"], c["source"], rel_to, c["value"] is not None and c["value"] == best[n])
                       if c else "-")
        for column in table.extra.values():
            value_source = column.get(v["name"])
            row.append(_cell(*value_source, rel_to) if value_source else "-")
        out.append("| " + " | ".join(row) + " |")
        for p in table.papers.get(v["name"], []):
            label = f"↳ *paper:* [{p.source}]({p.url}), {p.label} ({p.setting})"
            row = [label, "/".join(p.methods[:1]), fmt(p.scale), "finetuned" if p.finetuned else "none"]
            row += [_paper_value(p.values.get(n)) for n in lengths]
            row += [_paper_value(p.k_max) if name == "k_max" else "-" for name in table.extra]
            out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


def table_records(table: Table, variants: list[dict]) -> tuple[list[str], list[list]]:
    """The same table as columns and rows, for W&B (papers' rows marked in ``source``)."""
    columns = ["variant", "method", "scale", "stage", "source", *[str(n) for n in table.lengths], *table.extra]
    data = []
    for v in variants:
        if not any((v["name"], n) in table.cells for n in table.lengths):
            continue
        row = [v["name"], v["method"], float(v["scale"]), variant_stage(v), "reproduction"]
        row += [table.cells[(v["name"], n)]["value"] if (v["name"], n) in table.cells else None for n in table.lengths]
        row += [c.get(v["name"], (None,))[0] for c in table.extra.values()]
        data.append(row)
        for p in table.papers.get(v["name"], []):
            prow = [v["name"], p.methods[0], p.scale, "finetuned" if p.finetuned else "none",
                    f"paper: {p.source} ({p.label})"]
            prow += [_number(p.values.get(n)) for n in table.lengths]
            prow += [p.k_max if name == "k_max" else None for name in table.extra]
            data.append(prow)
    return columns, data


def _number(x):
    return x if isinstance(x, (int, float)) else None


def protocol_lines(results: list[tuple[str, dict]], eval_name: str) -> list[str]:
    """What the evaluation JSONs say about how they were measured: fixed settings, and counts by length."""
    rs = [r for _, r in results if r["eval"] == eval_name]
    keys = sorted({k for r in rs for k, v in r.items()
                   if k not in _NOT_SETTINGS and (v is None or isinstance(v, (str, int, float, bool)))})
    fixed, by_length = [], []
    for k in keys:
        values = {repr(r.get(k)) for r in rs}
        if len(values) == 1:
            if rs[0].get(k) is not None:
                fixed.append(f"{k} = {rs[0].get(k)}")
            continue
        per_length = defaultdict(set)
        for r in rs:
            per_length[r["length"]].add(repr(r.get(k)))
        if all(len(s) == 1 for s in per_length.values()):
            by_length.append(f"{k}: " + ", ".join(f"{n}: {next(iter(per_length[n]))}" for n in sorted(per_length)))
    out = []
    if fixed:
        out.append("Settings: " + "; ".join(fixed) + ".")
    if by_length:
        out.append("By length: " + "; ".join(by_length) + ".")
    return out

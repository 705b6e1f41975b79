"""The local report: summary.csv in long form, report.md and report.html with the papers' tables and plots.

Generic over evaluations: every evaluation JSON with ``metrics`` gets a table by variant x length
per metric. A metric an evaluation found non-finite (a diverged model; the JSON lists it under
``diverged``) is a row with no value and status ``diverged``, shown as "diverged", never as missing. The first metric of an evaluation's ``metrics`` is its headline metric (a table in
the body, a plot against length); the others follow folded. Every number links to the JSON it came
from. Where the papers report the same setting (``paper_numbers``), their row sits under the
variant's, marked as the paper's. ``compare`` puts several experiments' summary.csv side by side.
"""

from __future__ import annotations

import base64
import csv
import html
import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from longctx.io import atomic_dir, atomic_path, read_json
from longctx.paper_numbers import Setting, matches
from longctx.tracking import variant_stage

log = logging.getLogger(__name__)

COLUMNS = ["experiment", "model", "variant", "method", "scale", "stage", "eval", "dataset", "length", "metric",
           "value", "source", "status"]
DIVERGED = "diverged"
_NOT_SETTINGS = {"eval", "length", "variant", "rope", "seconds", "metrics", "dataset"}


class ReportError(ValueError):
    """A result file cannot go into the report; the message names it."""


# --- gathering ------------------------------------------------------------------------------------


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
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def read_csv(path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise ReportError(f"{path} does not exist: build that experiment's report first")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["length"], r["scale"] = int(r["length"]), float(r["scale"])
        r["value"] = float(r["value"]) if r["value"] not in ("", None) else None
        r["status"] = r.get("status") or "ok"  # summary.csv files written before the status column
    return rows


# --- conventions ----------------------------------------------------------------------------------


def lower_is_better(metric: str) -> bool:
    return any(word in metric.lower() for word in ("perplexity", "ppl", "nll", "loss", "error"))


def metrics_by_eval(rows: list[dict]) -> dict[str, list[str]]:
    """Evaluation -> its metrics, headline first (the order of the JSON's ``metrics``)."""
    out: dict[str, list[str]] = {}
    for r in rows:
        names = out.setdefault(r["eval"], [])
        if r["metric"] not in names:
            names.append(r["metric"])
    from longctx.evaluate.plan import ORDER  # the papers' main tables lead; unknown evaluations follow by name

    order = [e for e in ORDER if e in out] + sorted(e for e in out if e not in ORDER)
    return {e: out[e] for e in order}


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) >= 100):
        return str(int(x))
    return f"{x:.2f}" if abs(x) < 1e4 else f"{x:.3g}"


def _title(eval_name: str) -> str:
    return {"perplexity": "Perplexity", "passkey": "Passkey retrieval"}.get(eval_name, eval_name.replace("_", " "))


# --- tables ---------------------------------------------------------------------------------------


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


def k_max_column(table: Table, variants: list[dict]) -> dict:
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


# extra columns per (eval, headline metric): name -> function(table, variants)
EXTRA_COLUMNS = {("passkey", "accuracy"): {"k_max": k_max_column}}


def build_table(rows, eval_name, metric, variants, setting: Setting | None) -> Table | None:
    cells = {(r["variant"], r["length"]): r for r in rows if r["eval"] == eval_name and r["metric"] == metric}
    if not cells:
        return None
    table = Table(eval_name, metric, sorted({n for _, n in cells}), cells)
    for name, fn in EXTRA_COLUMNS.get((eval_name, metric), {}).items():
        table.extra[name] = fn(table, variants)
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
    text = f"[{_fmt(value) if value is not None else DIVERGED}]({os.path.relpath(source, rel_to)})"
    return f"**{text}**" if bold else text


def _paper_value(value) -> str:
    return f"*{_fmt(value)}*" if value is not None else "-"


def table_markdown(table: Table, variants: list[dict], rel_to) -> str:
    lengths = table.lengths
    head = ["variant", "method", "scale", "stage", *map(str, lengths), *table.extra]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = {n: table.best(n) for n in lengths}
    for v in variants:
        if not any((v["name"], n) in table.cells for n in lengths):
            continue
        row = [v["name"], v["method"], _fmt(float(v["scale"])), variant_stage(v)]
        for n in lengths:
            c = table.cells.get((v["name"], n))
            row.append(_cell(c["value"], c["source"], rel_to, c["value"] is not None and c["value"] == best[n])
                       if c else "-")
        for column in table.extra.values():
            value_source = column.get(v["name"])
            row.append(_cell(*value_source, rel_to) if value_source else "-")
        out.append("| " + " | ".join(row) + " |")
        for p in table.papers.get(v["name"], []):
            label = f"↳ *paper:* [{p.source}]({p.url}), {p.label}"
            row = [label, "/".join(p.methods[:1]), _fmt(p.scale), "finetuned" if p.finetuned else "none"]
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


# --- figures --------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(variant: dict, methods: list[str]):
    import matplotlib

    if variant["method"] == "none" and not variant.get("finetune"):
        color = "black"
    else:
        color = matplotlib.colormaps["tab10"](methods.index(variant["method"]) % 10)
    return {"color": color, "linestyle": "-" if variant.get("finetune") else "--",
            "marker": "s" if variant.get("search") else "o"}


def _save(fig, path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _pyplot().close(fig)


def plot_by_length(table: Table, variants: list[dict], original_context: int, path, title: str) -> None:
    """The headline metric against length, a line per variant (colour = method, dashed = not fine-tuned)."""
    plt = _pyplot()
    methods = sorted({v["method"] for v in variants})
    from matplotlib.ticker import LogLocator, ScalarFormatter

    fig, ax = plt.subplots(figsize=(8.5, 4.6), layout="constrained")
    for v in variants:
        points = [(n, table.cells[(v["name"], n)]["value"]) for n in table.lengths
                  if (v["name"], n) in table.cells and table.cells[(v["name"], n)]["value"] is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], label=v["name"], **_style(v, methods))
    ax.set_xscale("log", base=2)
    ax.set_xticks(table.lengths, [str(n) for n in table.lengths])
    ax.xaxis.set_minor_locator(LogLocator(base=2, subs=()))
    if len(table.lengths) > 8:
        plt.setp(ax.get_xticklabels(), rotation=60, fontsize=7)
    values = [c["value"] for c in table.cells.values() if c["value"] is not None] or [0.0]
    if lower_is_better(table.metric) and min(values) > 0:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        if max(values) < 10 * min(values):  # within a decade, label the minor ticks too
            ax.yaxis.set_minor_formatter(ScalarFormatter())
    elif 0 <= min(values) and max(values) <= 1:  # accuracies: the whole range, so 0 looks like 0
        ax.set_ylim(-0.03, 1.03)
    ax.axvline(original_context, color="grey", linestyle=":", linewidth=1)
    ax.annotate(f"L = {original_context}", (original_context, 0), xycoords=("data", "axes fraction"),
                xytext=(3, 4), textcoords="offset points", fontsize=8, color="grey")
    ax.set_xlabel("evaluation length (tokens)")
    ax.set_ylabel(table.metric + (" (log scale)" if ax.get_yscale() == "log" else ""))
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    _save(fig, path)


def passkey_heatmaps(results: list[dict], variants: list[dict], plots_dir, experiment: str) -> dict[str, str]:
    """A depth-by-length heatmap per variant (``longctx.evaluate.passkey.plot_heatmap``); variant -> file name."""
    from longctx.evaluate.passkey import plot_heatmap

    out = {}
    for v in variants:
        mine = [r for r in results if r["variant"] == v["name"]]
        if mine and all(isinstance(r.get("trials"), list) for r in mine):
            name = f"passkey-heatmap-{v['name']}.png"
            plot_heatmap(mine, Path(plots_dir) / name, f"{experiment}: {v['name']}")
            out[v["name"]] = name
    return out


# figures drawn from one evaluation's JSONs across lengths, per variant: eval -> function
EVAL_FIGURES = {"passkey": passkey_heatmaps}


def plot_search(searches: dict[str, dict], path, title: str) -> None:
    """LongRoPE search: best and mean perplexity per iteration, and the factors found per dimension."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for i, (name, found) in enumerate(sorted(searches.items())):
        color = plt.get_cmap("tab10")(i % 10)
        history = found.get("history", [])
        its = [h["iteration"] for h in history]
        left.plot(its, [h["best_perplexity"] for h in history], color=color, marker="o", label=f"{name} best")
        left.plot(its, [h["mean_perplexity"] for h in history], color=color, linestyle="--", label=f"{name} mean")
        right.plot(range(len(found["factors"])), found["factors"], color=color, marker=".",
                   label=f"{name} (n_hat = {found.get('n_hat')})")
        right.axhline(found["scale"], color=color, linestyle=":", linewidth=1)
    left.xaxis.get_major_locator().set_params(integer=True)
    left.set_xlabel("iteration")
    left.set_ylabel("perplexity at the target length")
    left.set_title("convergence")
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    right.set_xlabel("RoPE dimension pair i")
    right.set_ylabel("rescale factor lambda_i (dotted: PI = s)")
    right.set_title("factors found")
    right.grid(True, alpha=0.3)
    right.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


# --- the report -----------------------------------------------------------------------------------


@dataclass
class Report:
    rows: list[dict]
    tables: list[Table]
    plots: dict[str, Path]  # W&B key -> PNG
    searches: dict[str, dict]
    markdown: str


def build_report(results, variants, run: dict, dataset: str, out_md, plots_dir, searches: dict[str, tuple[str, dict]],
                 setting: Setting | None, plots_link_dir=None, out_csv=None) -> Report:
    """Tables, plots (written into ``plots_dir``) and the markdown text, links relative to ``out_md``.

    ``plots_link_dir``: where the markdown says the plots are, when they are written elsewhere first.
    """
    here = Path(out_md).parent
    plots_dir = Path(plots_dir)
    csv_link = os.path.relpath(out_csv or Path(out_md).with_name("summary.csv"), here)
    rel_plots = os.path.relpath(plots_link_dir or plots_dir, here)
    rows = collect(results, variants, run["experiment"], run["model"], dataset)
    L = run["original_context"]
    evals = metrics_by_eval(rows)
    parts = [
        f"# Report: {run['experiment']}",
        "",
        f"Base model `{run['model']}` (source: {run.get('model_source', '?')}), original context L = {L} tokens; "
        f"{len(variants)} variants; evaluations: {', '.join(evals) or 'none'}. "
        f"Every number links to the JSON it came from; [summary.csv]({csv_link}) "
        f"holds them all in long form. Rows marked *paper:* are the papers' own numbers for the same setting, "
        f"not ours. The best value per length is in bold.",
        "",
    ]
    tables, plots = [], {}
    for eval_name, metrics in evals.items():
        eval_results = [r for _, r in results if r["eval"] == eval_name]
        parts += [f"## {_title(eval_name)} by length", ""]
        parts += [line + "\n" for line in protocol_lines(results, eval_name)]
        for k, metric in enumerate(metrics):
            table = build_table(rows, eval_name, metric, variants, setting)
            tables.append(table)
            direction = "lower is better" if lower_is_better(metric) else "higher is better"
            body = [f"**{metric}** ({direction}, dataset: {', '.join(sorted({c['dataset'] for c in table.cells.values()}))})",
                    "", table_markdown(table, variants, here), ""]
            if k == 0:
                parts += body
                if "k_max" in table.extra:
                    parts += ["k_max: PI's measure over the lengths tested here, the largest length such that every "
                              "tested length up to it reaches 20% accuracy.", ""]
                name = f"{eval_name}.png"  # the headline metric's plot
                plot_by_length(table, variants, L, plots_dir / name, f"{run['experiment']}: {metric} by length")
                plots[f"report/plots/{eval_name}"] = plots_dir / name
                parts += [f"![{metric} by length]({rel_plots}/{name})", ""]
                if eval_name in EVAL_FIGURES:
                    figures = EVAL_FIGURES[eval_name](eval_results, variants, plots_dir, run["experiment"])
                    images = []
                    for variant, name in figures.items():
                        plots[f"report/plots/{eval_name}_heatmap/{variant}"] = plots_dir / name
                        images.append(f"![{eval_name} heatmap, {variant}]({rel_plots}/{name})")
                    if images:  # one paragraph: the HTML page lays them out side by side
                        parts += ["Accuracy by depth of the key and length, per variant (grey: no trial there):",
                                  "", "\n".join(images), ""]
            else:
                if k == 1:
                    parts += [f"<details><summary>Other metrics: {', '.join(metrics[1:])}</summary>", ""]
                parts += body
                if k == len(metrics) - 1:
                    parts += ["</details>", ""]
    if searches:
        parts += ["## LongRoPE search convergence", "",
                  "| variant | target length | iterations | candidates evaluated | best perplexity, first iteration | "
                  "best perplexity, last | n_hat | artifact |", "|---|---|---|---|---|---|---|---|"]
        for name, (path, found) in sorted(searches.items()):
            history = found.get("history", [])
            link = f"[factors.json]({os.path.relpath(path, here)})"
            parts.append(f"| {name} | {found.get('length', '-')} | {len(history)} | "
                         f"{history[-1].get('evaluated', '-') if history else '-'} | "
                         f"{_fmt(history[0]['best_perplexity']) if history else '-'} | {_fmt(found.get('perplexity'))} | "
                         f"{found.get('n_hat', '-')} | {link} |")
        plot_search({n: f for n, (_, f) in searches.items()}, plots_dir / "search.png",
                    f"{run['experiment']}: LongRoPE evolutionary search")
        plots["report/plots/search"] = plots_dir / "search.png"
        parts += ["", f"![LongRoPE search convergence]({rel_plots}/search.png)", ""]
    parts += papers_section(tables, setting)
    return Report(rows, tables, plots, {n: f for n, (_, f) in searches.items()}, "\n".join(parts))


def papers_section(tables: list[Table], setting: Setting | None) -> list[str]:
    from longctx.paper_numbers import load

    matched = [(t.eval, t.metric, v, p) for t in tables for v, ps in t.papers.items() for p in ps]
    out = ["## The papers' numbers", ""]
    if setting is None:
        return out + ["_Not compared: the report was built without the experiment's setting._", ""]
    if matched:
        out += ["These rows from the papers have this experiment's setting (base model family, method, scale, "
                "fine-tuning, dataset, length) and appear under the matching variant above:", "",
                "| our variant | paper | table | their row | model | dataset | protocol |", "|---|---|---|---|---|---|---|"]
        for eval_name, metric, variant, p in sorted(matched, key=lambda m: (m[0], m[1], m[2], m[3].source, m[3].label)):
            out.append(f"| {variant} | [{p.paper_title}]({p.url}) | {p.table} | {p.label} | {p.model} | "
                       f"{p.dataset or '-'} | {p.protocol} |")
        out.append("")
    else:
        datasets = "; ".join(f"{e}: {', '.join(sorted(set(d) - {e}))}" for e, d in setting.datasets.items()
                             if set(d) - {e})
        out += [f"No published number has this experiment's setting (model `{setting.model}`; "
                f"{'datasets ' + datasets if datasets else 'no dataset'}), "
                "so none is shown beside the reproduction. The papers' numbers, for reference only:", ""]
    out += ["<details><summary>All the papers' numbers the report knows (src/longctx/paper_numbers.yaml)</summary>", "",
            "| paper | table | model | dataset | eval | metric | row | method | scale | values |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for p in load():
        values = (f"k_max {p.k_max}" if p.k_max is not None
                  else ", ".join(f"{n}: {_fmt(v)}" for n, v in sorted(p.values.items())))
        out.append(f"| [{p.paper_title}]({p.url}) | {p.table} | {p.model} | {p.dataset or '-'} | {p.eval} | {p.metric} | "
                   f"{p.label} | {'/'.join(p.methods)} | {_fmt(p.scale) if p.scale else 'not stated'} | {values} |")
    return out + ["", "</details>", ""]


def render_html(markdown: str, base_dir, title: str) -> str:
    """The markdown as one self-contained HTML page: images inlined as base64, links kept relative."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": True}).enable("table")
    tokens = md.parse(markdown)
    for token in tokens:
        for child in token.children or []:
            if child.type == "image":
                src = Path(base_dir) / child.attrGet("src")
                if not src.exists():
                    raise ReportError(f"report image {src} does not exist")
                child.attrSet("src", "data:image/png;base64," + base64.b64encode(src.read_bytes()).decode())
    body = md.renderer.render(tokens, md.options, {})
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, -apple-system, "DejaVu Sans", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }}
table {{ border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em; display: block; overflow-x: auto; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th:nth-child(-n+4), td:nth-child(-n+4) {{ text-align: left; }}
thead th {{ background: #f3f3f3; }}
tr:has(em) td {{ background: #fbf8ec; color: #555; }}
a {{ color: #1a5fb4; text-decoration: none; }} a:hover {{ text-decoration: underline; }}
img {{ max-width: 100%; border: 1px solid #eee; }}
img[alt*="heatmap"] {{ width: 32%; }}
details {{ margin: 0.5em 0 1em; }} summary {{ cursor: pointer; color: #555; }}
code {{ background: #f3f3f3; padding: 0 0.2em; }}
</style></head>
<body>
{body}</body></html>
"""


def write_report(result_files, variants: list[dict], run: dict, dataset: str, out_md, out_csv, out_html=None,
                 plots_dir=None, search_files=(), setting: Setting | None = None, tracker=None) -> Report:
    """Write summary.csv, the plots, report.md and report.html; log the cross-method tables to ``tracker``."""
    out_md = Path(out_md)
    plots_dir = Path(plots_dir) if plots_dir else out_md.parent / "plots"
    results = load_results(result_files)
    searches = {}
    for path in search_files:
        found = read_json(path)
        if "factors" not in found:
            raise ReportError(f"{path}: a search result needs 'factors'")
        searches[Path(path).parent.name] = (str(path), found)
    with atomic_dir(plots_dir) as tmp_plots:
        report = build_report(results, variants, run, dataset, out_md, tmp_plots, searches, setting, plots_dir,
                              out_csv)
    report.plots = {k: plots_dir / p.name for k, p in report.plots.items()}
    write_csv(report.rows, out_csv)
    if out_html:
        page = render_html(report.markdown, out_md.parent, f"Report: {run['experiment']}")
        with atomic_path(out_html) as tmp:
            tmp.write_text(page)
    if tracker is not None:
        log_to_wandb(tracker, report, variants)
    with atomic_path(out_md) as tmp:
        tmp.write_text(report.markdown)
    return report


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
               ", ".join(f"{n}: {_fmt(x)}" for n, x in sorted(p.values.items())) or f"k_max {p.k_max}"]
              for t in report.tables for v, ps in t.papers.items() for p in ps]
    tracker.table("report/papers", ["eval", "metric", "variant", "paper", "row", "url", "values"], papers)
    for key, path in report.plots.items():
        tracker.image(key, path)
    tracker.summary(summary)


# --- several experiments side by side ---------------------------------------------------------------


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
        parts += [f"## {_title(eval_name)}", ""]
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
                row = [e, f"`{first['model']}`", v, first["method"], _fmt(first["scale"]), first["stage"], first["dataset"]]
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

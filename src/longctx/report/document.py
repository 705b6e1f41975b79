"""The report itself: report.md (tables, figures, the papers' numbers) and report.html, one
self-contained page with the images inlined; ``write_report`` writes them with summary.csv."""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass
from pathlib import Path

from longctx.artifacts import atomic_dir, atomic_path, read_json
from longctx.report.figures import EVAL_FIGURES, plot_by_length, plot_search
from longctx.report.paper_numbers import Setting
from longctx.report.summary import ReportError, collect, fmt, load_results, lower_is_better, metrics_by_eval, title, write_csv
from longctx.report.tables import EXTRA_COLUMNS, Table, build_table, protocol_lines, table_markdown
from longctx.report.wandb_tables import log_to_wandb


@dataclass
class Report:
    rows: list[dict]
    tables: list[Table]
    plots: dict[str, Path]  # W&B key -> PNG
    searches: dict[str, dict]
    markdown: str


def build_report(results, variants, run: dict, dataset: str, out_md, plots_dir, searches: dict[str, tuple[str, dict]],
                 setting: Setting | None, plots_link_dir=None, out_csv=None, options: dict | None = None) -> Report:
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
        parts += [f"## {title(eval_name)} by length", ""]
        parts += [line + "\n" for line in protocol_lines(results, eval_name)]
        for k, metric in enumerate(metrics):
            table = build_table(rows, eval_name, metric, variants, setting, options)
            tables.append(table)
            direction = "lower is better" if lower_is_better(metric) else "higher is better"
            body = [f"**{metric}** ({direction}, dataset: {', '.join(sorted({c['dataset'] for c in table.cells.values()}))})",
                    "", table_markdown(table, variants, here), ""]
            if k == 0:
                parts += body
                for name, column in EXTRA_COLUMNS.get((eval_name, metric), {}).items():
                    parts += [column.note(options or {}), ""]
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
                         f"{fmt(history[0]['best_perplexity']) if history else '-'} | {fmt(found.get('perplexity'))} | "
                         f"{found.get('n_hat', '-')} | {link} |")
        plot_search({n: f for n, (_, f) in searches.items()}, plots_dir / "search.png",
                    f"{run['experiment']}: LongRoPE evolutionary search")
        plots["report/plots/search"] = plots_dir / "search.png"
        parts += ["", f"![LongRoPE search convergence]({rel_plots}/search.png)", ""]
    parts += papers_section(tables, setting)
    return Report(rows, tables, plots, {n: f for n, (_, f) in searches.items()}, "\n".join(parts))


def papers_section(tables: list[Table], setting: Setting | None) -> list[str]:
    from longctx.report.paper_numbers import load

    matched = [(t.eval, t.metric, v, p) for t in tables for v, ps in t.papers.items() for p in ps]
    out = ["## The papers' numbers", ""]
    if setting is None:
        return out + ["_Not compared: the report was built without the experiment's setting._", ""]
    if matched:
        out += ["These rows from the papers have this experiment's setting (base model family, method, scale, "
                "fine-tuning and its steps, IFT, evaluation scale, dataset, length) and appear under the matching "
                "variant above:", "",
                "| our variant | paper | table | their row | setting | dataset | protocol |", "|---|---|---|---|---|---|---|"]
        for eval_name, metric, variant, p in sorted(matched, key=lambda m: (m[0], m[1], m[2], m[3].source, m[3].label)):
            out.append(f"| {variant} | [{p.paper_title}]({p.url}) | {p.table} | {p.label} | {p.setting} | "
                       f"{p.dataset or '-'} | {p.protocol} |")
        out.append("")
    else:
        datasets = "; ".join(f"{e}: {', '.join(sorted(set(d) - {e}))}" for e, d in setting.datasets.items()
                             if set(d) - {e})
        out += [f"No published number has this experiment's setting (model `{setting.model}`; "
                f"{'datasets ' + datasets if datasets else 'no dataset'}), "
                "so none is shown beside the reproduction. The papers' numbers, for reference only:", ""]
    out += ["<details><summary>All the papers' numbers the report knows (src/longctx/report/paper_numbers.yaml)</summary>", "",
            "| paper | table | setting | dataset | eval | metric | row | method | values |",
            "|---|---|---|---|---|---|---|---|---|"]
    for p in load():
        values = (f"k_max {p.k_max}" if p.k_max is not None
                  else ", ".join(f"{n}: {fmt(v)}" for n, v in sorted(p.values.items())))
        out.append(f"| [{p.paper_title}]({p.url}) | {p.table} | {p.setting} | {p.dataset or '-'} | {p.eval} | {p.metric} | "
                   f"{p.label} | {'/'.join(p.methods)} | {values} |")
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
                 plots_dir=None, search_files=(), setting: Setting | None = None, tracker=None,
                 options: dict | None = None) -> Report:
    """Write summary.csv, the plots, report.md and report.html; log the cross-method tables to ``tracker``.

    ``options``: the ``report`` config section's knobs (``effective_length_threshold``)."""
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
                              out_csv, options)
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

"""The report's figures: each evaluation's headline metric by length, passkey heatmaps, the
LongRoPE search's convergence and factors."""

from __future__ import annotations

import math
from pathlib import Path

from longctx.artifacts import atomic_path
from longctx.report.summary import lower_is_better
from longctx.report.tables import Table


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

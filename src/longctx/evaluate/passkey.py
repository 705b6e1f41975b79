"""Passkey retrieval with PI's prompt (Mohtashami & Jaggi): a 5-digit key hidden in filler.

Each trial draws a key and a depth from a seeded generator, fills the prompt up to the target
length in tokens, greedily generates a few tokens and counts it correct when the first integer
generated is the key. Trials of one length are generated in batches. Across lengths (at report
time, from the per-length JSONs): PI's ``k_max`` and a depth-by-length heatmap (``plot_heatmap``).
"""

from __future__ import annotations

import random
import time
from collections import defaultdict

from longctx.evaluate.prompts import answer_prompts, encode, first_integer, words
from longctx.evaluate.registry import EvaluationError, plain_lengths, plain_settings, register

TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
        "I will quiz you about the important information there.")
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"


def min_length(**_) -> int:
    """Fewest tokens a prompt can have (task, key, question and one filler sentence, a token a word at
    least, plus BOS): what the config is checked against before any job."""
    return words(TASK + NEEDLE.format(key=10000) + QUESTION + FILLER) + 2


def build_prompt(tokenizer, length: int, key: int, depth: float) -> list[int]:
    """Token ids of a prompt of at most ``length`` tokens with the key at relative ``depth``."""
    fixed = len(encode(tokenizer, TASK + NEEDLE.format(key=key) + QUESTION))
    per_filler = len(tokenizer(FILLER * 16, add_special_tokens=False)["input_ids"]) / 16
    n_filler = int((length - fixed - 2) // per_filler)
    if n_filler < 1:
        raise EvaluationError(f"passkey: length {length} is too short for the prompt ({fixed} tokens without filler)")
    while True:
        before = round(n_filler * depth)
        text = TASK + FILLER * before + NEEDLE.format(key=key) + FILLER * (n_filler - before) + QUESTION
        ids = encode(tokenizer, text)
        if len(ids) <= length or n_filler <= 1:
            return ids
        n_filler -= 1


def is_correct(answer: str, key: int) -> bool:
    """PI's scoring: the first integer in the generated text is the key."""
    return first_integer(answer) == key


def trials(length: int, n: int, seed: int) -> list[tuple[int, float]]:
    """(key, depth) of each trial at one length; the same seed gives the same trials for every variant."""
    rng = random.Random(f"{seed}-{length}")
    return [(rng.randint(10000, 99999), rng.random()) for _ in range(n)]


def grid_lengths(max_length: int, points: int = 32) -> list[int]:
    """PI's passkey grid: ``points`` lengths evenly spaced up to ``max_length`` (the last is it)."""
    return sorted({int(round(max_length * (k + 1) / points)) for k in range(points)})


def lengths(section: dict, evaluation_lengths: list[int], original_context: int) -> list[int]:
    """Its own lengths, else PI's grid up to the longest evaluation length (``grid_points``), else those."""
    if not section.get("lengths") and section["grid_points"]:
        return grid_lengths(max(evaluation_lengths), section["grid_points"])
    return plain_lengths(section, evaluation_lengths, original_context)


def settings(section: dict) -> dict:
    out = {k: v for k, v in plain_settings(section).items() if k != "grid_points"}
    out["trials_per_length"] = out.pop("trials")
    return out


@register("passkey", order=20, generates=True, min_length=min_length, lengths=lengths, settings=settings)
def evaluate_passkey(model, tokenizer, length: int, *, trials_per_length=10, seed=1234, max_new_tokens=10,
                     batch_size=16, batch_tokens=32768, **_):
    started = time.time()
    drawn = trials(length, trials_per_length, seed)
    prompts = [build_prompt(tokenizer, length, key, depth) for key, depth in drawn]
    answers = answer_prompts(model, tokenizer, prompts, max_new_tokens, batch_size=batch_size,
                             batch_tokens=batch_tokens)
    rows = [{"key": key, "depth": depth, "prompt_tokens": len(ids), "answer": answer,
             "correct": is_correct(answer, key)}
            for (key, depth), ids, answer in zip(drawn, prompts, answers)]
    return {
        "eval": "passkey",
        "length": length,
        "trials": rows,
        "metrics": {"accuracy": sum(r["correct"] for r in rows) / len(rows)},
        "seconds": time.time() - started,
    }


def k_max(accuracy_by_length: dict[int, float], threshold: float = 0.2) -> int:
    """PI's k_max: the largest k such that every tested length <= k reaches ``threshold`` accuracy."""
    best = 0
    for length in sorted(accuracy_by_length):
        if accuracy_by_length[length] < threshold:
            break
        best = length
    return best


def accuracy_by_length(results: list[dict]) -> dict[int, float]:
    """Per-length passkey accuracy from the evaluate stage's JSONs (one variant)."""
    return {int(r["length"]): float(r["metrics"]["accuracy"]) for r in results if r["eval"] == "passkey"}


def depth_length_grid(results: list[dict], depth_bins: int = 10):
    """(lengths, bin edges, accuracy [depth_bins x lengths], NaN where no trial fell) from per-length JSONs."""
    import numpy as np

    lengths = sorted({int(r["length"]) for r in results if r["eval"] == "passkey"})
    edges = np.linspace(0.0, 1.0, depth_bins + 1)
    hits, counts = defaultdict(float), defaultdict(int)
    for r in results:
        if r["eval"] != "passkey":
            continue
        for t in r["trials"]:
            b = min(int(t["depth"] * depth_bins), depth_bins - 1)
            hits[(b, int(r["length"]))] += float(t["correct"])
            counts[(b, int(r["length"]))] += 1
    grid = np.full((depth_bins, len(lengths)), np.nan)
    for (b, length), n in counts.items():
        grid[b, lengths.index(length)] = hits[(b, length)] / n
    return lengths, edges, grid


def plot_heatmap(results: list[dict], path, title: str = "passkey retrieval", depth_bins: int = 10) -> None:
    """Needle-in-a-haystack style PNG: accuracy by needle depth (rows) and prompt length (columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from longctx.artifacts import atomic_path

    lengths, edges, grid = depth_length_grid(results, depth_bins)
    if not lengths:
        raise EvaluationError("passkey heatmap: no passkey results given")
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(lengths) + 2), 4.5))
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="lightgrey")  # grey: no trial at that depth
    image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", origin="upper", cmap=cmap, vmin=0, vmax=1)
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], rotation=60, fontsize=7)
    ax.set_yticks(range(depth_bins), [f"{100 * edges[b]:.0f}-{100 * edges[b + 1]:.0f}%" for b in range(depth_bins)],
                  fontsize=7)
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("key depth in the prompt")
    best = k_max(accuracy_by_length(results))
    ax.set_title(f"{title} (k_max = {best})")
    fig.colorbar(image, ax=ax, label="accuracy")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)

"""Passkey retrieval with PI's prompt (Mohtashami & Jaggi): a 5-digit key hidden in filler.

Each trial draws a key and a depth from a seeded generator, fills the prompt up to the target
length in tokens, greedily generates a few tokens and counts it correct when the first integer
generated is the key. PI's k_max is computed over lengths by ``k_max``.
"""

from __future__ import annotations

import random
import re
import time

import torch

from longctx.evaluate.registry import EvaluationError, register
from longctx.generation import greedy_generate

TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
        "I will quiz you about the important information there.")
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"


def build_prompt(tokenizer, length: int, key: int, depth: float) -> list[int]:
    """Token ids of a prompt of at most ``length`` tokens with the key at relative ``depth``."""
    enc = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    fixed = len(enc(TASK + NEEDLE.format(key=key) + QUESTION))
    per_filler = len(enc(FILLER * 16)) / 16
    n_filler = int((length - fixed - 2) // per_filler)
    if n_filler < 1:
        raise EvaluationError(f"passkey: length {length} is too short for the prompt ({fixed} tokens without filler)")
    while True:
        before = round(n_filler * depth)
        text = TASK + FILLER * before + NEEDLE.format(key=key) + FILLER * (n_filler - before) + QUESTION
        ids = enc(text)
        if len(ids) <= length or n_filler <= 1:
            return ids
        n_filler -= 1


def first_integer(text: str) -> int | None:
    m = re.search(r"\d+", text)
    return int(m.group()) if m else None


def trials(length: int, n: int, seed: int):
    rng = random.Random(f"{seed}-{length}")
    return [(rng.randint(10000, 99999), rng.random()) for _ in range(n)]


@register("passkey")
def evaluate_passkey(model, tokenizer, length: int, *, trials_per_length=10, seed=1234, max_new_tokens=10, **_):
    device = next(model.parameters()).device
    started, rows = time.time(), []
    for key, depth in trials(length, trials_per_length, seed):
        ids = build_prompt(tokenizer, length, key, depth)
        out = greedy_generate(model, torch.tensor([ids], device=device), max_new_tokens)
        answer = tokenizer.decode(out[0], skip_special_tokens=True)
        rows.append({"key": key, "depth": depth, "prompt_tokens": len(ids), "answer": answer,
                     "correct": first_integer(answer) == key})
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

"""LongRoPE2's needle-driven perplexity data (Shang et al. 2025, arXiv 2502.20082, section 3.2, App. C).

Each fitness row is one validation document with a "needle" planted in it and a question at the
end; the fitness scores only the answer tokens, so it measures whether the rescaled RoPE lets the
model reach back to the needle, not how well it predicts nearby tokens. A row of exactly the
search length T::

    [BOS] instruction  text[:p]  needle  text[p:H]  question  answer

with the texts of the paper's App. C (a 7-digit "special magic number"). ``depths`` says where
the needle goes, as a fraction of the text:

- ``[0.0]`` (default): at the start of every document, right after the instruction, as the paper
  does ("At the start of each sample, we insert a needle ... at the end, we ask the model to
  retrieve this needle"; 10 PG19 validation books);
- a list of fractions: every document once per depth (several depths, D x len(depths) rows);
- ``stratified``: one needle per document, document k of D at a random depth in [k/D, (k+1)/D),
  as the first author's data script does (github.com/J-shang/LongRoPE,
  utils/tokenize_needle_dataset.py); it also moves the needle to the nearest line break, which
  ``breaks`` (token ids that end a line) enables here for every depth but the start.

Everything works on token ids; ``encode`` (text -> ids, no special tokens) is the model's tokenizer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from longctx.search.space import SearchError

# Shang et al. 2025, App. C ("Synthetic search data based on a PG19 book sample")
INSTRUCTION = ("A special magic number is hidden within the following text. Make sure to memorize it. "
               "I will quiz you about the number afterwards.\n")
NEEDLE = "One of the special magic numbers for {key} is: {number}.\n"
QUESTION = ("\nWhat is the special magic number for {key} mentioned in the provided text? "
            "The special magic number for {key} mentioned in the provided text is")
ANSWER = " {number}"
KEY = "numerous-kite"


@dataclass
class NeedleRows:
    """Fitness rows [R, T] and where each row's answer starts (the answer runs to the row's end)."""

    windows: torch.Tensor
    answer_start: torch.Tensor  # [R] int64
    rows: list[dict] = field(default_factory=list)  # per row: document, depth, needle_at, number


def row_depths(depths, documents: int, rng: random.Random) -> list[tuple[int, float]]:
    """(document index, depth) of every row, in row order."""
    if depths == "stratified":
        return [(k, (k + rng.random()) / documents) for k in range(documents)]
    if not depths or any(not 0.0 <= float(x) <= 1.0 for x in depths):
        raise SearchError(f"config key 'search.needle.depths': a list of fractions in [0, 1] or 'stratified', "
                          f"got {depths!r}")
    return [(k, float(x)) for k in range(documents) for x in depths]


def _snap(text: np.ndarray, at: int, breaks: set) -> int:
    """The position just after the line break nearest ``at`` (``at`` itself when the text has none)."""
    ends = [j + 1 for j, t in enumerate(text.tolist()) if t in breaks]
    return min(ends, key=lambda j: (abs(j - at), j)) if ends else at


def needle_rows(documents: list[np.ndarray], length: int, depths, seed: int, encode: Callable[[str], list[int]],
                bos_id: int | None = None, breaks=()) -> NeedleRows:
    """The needle rows of ``documents`` (token arrays of at least ``length`` tokens), seeded."""
    rng = random.Random(seed)
    breaks = set(int(t) for t in breaks)
    prefix = ([bos_id] if bos_id is not None else []) + list(encode(INSTRUCTION))
    windows, starts, rows = [], [], []
    for k, depth in row_depths(depths, len(documents), rng):
        number = rng.randint(1_000_000, 9_999_999)
        needle = list(encode(NEEDLE.format(key=KEY, number=number)))
        question = list(encode(QUESTION.format(key=KEY)))
        answer = list(encode(ANSWER.format(number=number)))
        text_len = length - len(prefix) - len(needle) - len(question) - len(answer)
        if text_len < 1 or not answer:
            raise SearchError(f"needle-driven fitness: {length} tokens leave no room for a document around the "
                              f"needle ({length - max(text_len, 0)} tokens of instruction, needle, question and "
                              f"answer); search at a longer length, or use search.fitness: perplexity")
        text = np.asarray(documents[k][:text_len], dtype=np.int64)
        if len(text) < text_len:
            raise SearchError(f"needle-driven fitness: document {k} has {len(text)} tokens, the row needs {text_len}")
        at = round(depth * text_len)
        if breaks and depth > 0:
            at = _snap(text, at, breaks)
        row = prefix + text[:at].tolist() + needle + text[at:].tolist() + question + answer
        assert len(row) == length, (len(row), length)
        windows.append(row)
        starts.append(length - len(answer))
        rows.append({"document": k, "depth": depth, "needle_at": len(prefix) + at, "number": number})
    return NeedleRows(torch.tensor(windows, dtype=torch.int64), torch.tensor(starts, dtype=torch.int64), rows)

"""RULER's scoring (``scripts/eval/evaluate.py``, ``scripts/eval/synthetic/constants.py``) and its
effective length (Hsieh et al. 2024 and the repository's ``README.md``).

* A prediction is stripped, control characters (``\\x00``-``\\x1f``) become newlines, stripped again.
* ``string_match_all`` (NIAH, VT, CWE, FWE): per sample the fraction of the reference strings that
  occur in the prediction, case-insensitively; the mean over samples, times 100, rounded to 2
  decimals.
* ``string_match_part`` (QA): per sample 1 when any reference occurs in the prediction, else 0;
  the mean over samples, times 100, rounded to 2 decimals.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f]")

# scripts/eval/synthetic/constants.py: which scorer each task family uses
METRIC_BY_FAMILY = {"niah": "string_match_all", "variable_tracking": "string_match_all",
                    "common_words_extraction": "string_match_all", "freq_words_extraction": "string_match_all",
                    "qa": "string_match_part"}

# The README's threshold: Llama-2-7B's average at 4K
THRESHOLD = 85.6


def postprocess(prediction: str) -> str:
    """RULER's clean-up of a generated answer before matching."""
    return _CONTROL.sub("\n", prediction.strip()).strip()


def match_all(prediction: str, references: list[str]) -> float:
    """One sample's ``string_match_all`` credit: the fraction of references found (0..1)."""
    p = prediction.lower()
    return sum(r.lower() in p for r in references) / len(references)


def match_part(prediction: str, references: list[str]) -> float:
    """One sample's ``string_match_part`` credit: 1 when any reference is found, else 0."""
    p = prediction.lower()
    return float(max(r.lower() in p for r in references))


def string_match_all(predictions: list[str], references: list[list[str]]) -> float:
    """RULER's string_match_all over samples, 0..100 rounded to 2 decimals."""
    return _mean_score(match_all, predictions, references)


def string_match_part(predictions: list[str], references: list[list[str]]) -> float:
    """RULER's string_match_part over samples, 0..100 rounded to 2 decimals."""
    return _mean_score(match_part, predictions, references)


SCORERS = {"string_match_all": string_match_all, "string_match_part": string_match_part}
CREDIT = {"string_match_all": match_all, "string_match_part": match_part}


def _mean_score(credit, predictions, references) -> float:
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"ruler scoring: {len(predictions)} predictions for {len(references)} references")
    if any(not refs for refs in references):
        raise ValueError("ruler scoring: a sample has no reference strings")
    return round(sum(credit(p, r) for p, r in zip(predictions, references)) / len(predictions) * 100, 2)


def effective_length(average_by_length: dict[int, float], threshold: float = THRESHOLD) -> int:
    """RULER's effective length: the longest tested length up to which the average score reaches the
    threshold (Llama-2-7B's 85.6 at 4K by default), 0 when the shortest tested length already misses.

    Precisely: sort the tested lengths; walk up while the score is >= ``threshold``; return the last
    length passed. A length above the threshold after a shorter one below it does not count.
    RULER (the paper's main results and the repository's README) calls the effective length the
    maximum length whose performance exceeds the threshold, Llama-2-7B's 85.6 at 4K; its README
    table underlines the scores that pass, gives each model's effective length as the last of the
    run of underlined lengths from 4K ("<4K" when 4K misses, ">128K" when all pass), and counts a
    score equal to the threshold as passing (Qwen3-32B's 85.6 at 128K, effective ">128K";
    Llama-2-7B's own 85.6 at 4K is the threshold). Where scores fall with length, as in all of
    RULER's results, this and "the longest length above the threshold" agree.
    """
    best = 0
    for length in sorted(average_by_length):
        if average_by_length[length] is None or not average_by_length[length] >= threshold:
            break
        best = int(length)
    return best

"""The evaluation registry: each entry says how an evaluation runs and how the workflow plans it.

An evaluation is one module that registers its function::

    @register("passkey", order=20, generates=True, min_length=min_length)
    def evaluate_passkey(model, tokenizer, length, *, seed=1234, trials_per_length=10, ...): ...

and one section ``evaluate.<section>`` of the schema (``enabled``, ``lengths``, optionally
``variants``, and its own settings, which become the function's keyword arguments). The entry tells the rest of the workflow what it
needs: its place in the report (``order``), whether it generates text (then
``evaluate.generation``'s batching applies), whether it reads the perplexity corpus' token files
(the rule gives them as ``data_prefix``), the fewest tokens its prompts need (checked against its
lengths when the config is read), and, where the section is not plain, hooks that pick its lengths
and settings from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

# what decides the jobs (which evaluations, at which lengths, for which variants), not how one runs
PLANNING_KEYS = ("enabled", "lengths", "variants")


class EvaluationError(ValueError):
    """An evaluation cannot run as configured (too few documents, a length too short, ...)."""


def plain_settings(section: dict) -> dict:
    """The section's keys but those that plan the jobs: the function's keyword arguments."""
    return {k: v for k, v in section.items() if k not in PLANNING_KEYS}


def plain_lengths(section: dict, evaluation_lengths: list[int], original_context: int) -> list[int]:
    """The section's own ``lengths``, else the experiment's evaluation lengths."""
    return sorted(set(section["lengths"])) if section.get("lengths") else list(evaluation_lengths)


@dataclass(frozen=True)
class Evaluation:
    name: str
    run: Callable  # (model, tokenizer, length, *, data_prefix=None, seed, **settings) -> result dict
    order: int  # place in the report: the papers' main tables first
    section: str  # its config section, evaluate.<section>
    generates: bool = False  # greedy generation: evaluate.generation's batching settings apply
    reads_tokens: bool = False  # reads the perplexity corpus' token files (data_prefix)
    min_length: Callable[..., int] | None = None  # fewest tokens a prompt and answer need, from the settings
    enabled: Callable[[dict], bool] = lambda section: bool(section["enabled"])
    lengths: Callable[[dict, list, int], list[int]] = plain_lengths
    settings: Callable[[dict], dict] = plain_settings


EVALUATIONS: dict[str, Callable] = {}  # name -> function, for callers that only run evaluations
ENTRIES: dict[str, Evaluation] = {}


def register(name: str, *, order: int, section: str | None = None, **entry):
    """Register the decorated function as evaluation ``name`` (see ``Evaluation`` for the fields)."""

    def wrap(fn):
        ENTRIES[name] = Evaluation(name, fn, order, section or name, **entry)
        EVALUATIONS[name] = fn
        return fn

    return wrap


def record_non_finite(result: dict) -> dict:
    """A metric that came out NaN or infinite (a diverged or corrupted model) becomes ``null`` and is
    listed under ``diverged``: never a NaN in a result file, never mistaken for a missing value."""
    diverged = [k for k, v in result["metrics"].items()
                if isinstance(v, float) and not math.isfinite(v)]
    if diverged:
        result["metrics"] = {k: (None if k in diverged else v) for k, v in result["metrics"].items()}
        result["diverged"] = diverged
    return result

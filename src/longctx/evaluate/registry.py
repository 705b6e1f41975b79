"""The evaluation registry, and what every evaluation result must satisfy before it is written."""

from __future__ import annotations

import math
from typing import Callable

EVALUATIONS: dict[str, Callable] = {}


class EvaluationError(ValueError):
    """An evaluation cannot run as configured (too few documents, a length too short, ...)."""


def register(name: str):
    def wrap(fn):
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

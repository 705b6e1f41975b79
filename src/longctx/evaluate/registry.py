from __future__ import annotations

from typing import Callable

EVALUATIONS: dict[str, Callable] = {}


class EvaluationError(ValueError):
    """An evaluation cannot run as configured (too few documents, a length too short, ...)."""


def register(name: str):
    def wrap(fn):
        EVALUATIONS[name] = fn
        return fn

    return wrap

"""Evaluations, one module each, in one registry (``longctx.evaluate.registry``).

``EVALUATIONS[name](model, tokenizer, length, ...)`` returns a result dict ``{"eval", "length",
"metrics": {...}, ...}`` that the evaluate job writes as one cached JSON per (experiment, variant,
evaluation, length) and the report gathers; ``entries()`` gives each evaluation's registry entry
(its order, config section, whether it generates or reads token files, its shortest prompt).
Every module of this package is imported when the registry is first asked for, so a new
evaluation is a new module here (and its schema section); nothing else lists them.
"""

import importlib
import pkgutil

from longctx.evaluate.registry import EvaluationError, register  # noqa: F401


def entries():
    """name -> ``Evaluation``, in report order (every evaluation module imported)."""
    from longctx.evaluate.registry import ENTRIES

    _import_all()
    return dict(sorted(ENTRIES.items(), key=lambda item: item[1].order))


def _import_all() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def __getattr__(name):
    # the evaluation modules import torch and transformers: load them when the registry is first asked for
    if name == "EVALUATIONS":
        from longctx.evaluate.registry import EVALUATIONS

        _import_all()
        return EVALUATIONS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

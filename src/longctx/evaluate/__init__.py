"""Evaluations, one module each, in one registry: ``EVALUATIONS[name](model, tokenizer, length, ...)``.

Each returns a result dict ``{"eval", "length", "metrics": {...}, ...}`` that the evaluate stage
writes as one cached JSON per (experiment, variant, evaluation, length) and the report gathers.
``longctx.evaluate.plan`` turns the config's ``evaluate`` section into the evaluations to run,
their lengths and their settings.
"""

import importlib

from longctx.evaluate.registry import EvaluationError, register  # noqa: F401
from longctx.evaluate.plan import enabled_evaluations, lengths_for, settings_for  # noqa: F401

MODULES = ("perplexity", "passkey", "lines", "wikiqa", "govreport", "harness")


def __getattr__(name):
    # the evaluation modules import torch and transformers: load them when the registry is first
    # asked for, so the workflow can plan its jobs (longctx.evaluate.plan) without that cost
    if name == "EVALUATIONS":
        for module in MODULES:
            importlib.import_module(f"longctx.evaluate.{module}")
        from longctx.evaluate.registry import EVALUATIONS

        return EVALUATIONS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

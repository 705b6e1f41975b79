"""Evaluations, one module each, in one registry: ``EVALUATIONS[name](model, tokenizer, length, ...)``.

Each returns a result dict ``{"eval", "length", "metrics": {...}, ...}`` that the evaluate stage
writes as one cached JSON per (experiment, variant, evaluation, length) and the report gathers.
"""

from longctx.evaluate.registry import EVALUATIONS, EvaluationError, register  # noqa: F401
from longctx.evaluate import passkey, perplexity  # noqa: F401  (fill the registry)

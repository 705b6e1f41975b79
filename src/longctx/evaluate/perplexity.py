"""Perplexity by length (PI, YaRN, LongRoPE protocols).

``truncate``: the first N tokens of every document with at least N tokens, one forward each
(YaRN/LongRoPE). ``sliding``: windows of N tokens moved by a stride S over each document (PI's
S=256, documents cut to ``document_tokens``, e.g. 32768); each window scores the tokens no earlier
window scored, the last window ends at the document's end. With S = N and ``document_tokens`` = N
the two modes are the same computation. Documents shorter than N (or than ``document_tokens``) are
left out and counted. Perplexity = exp(mean over documents of each document's mean token NLL);
the token-weighted figure is reported too.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

from longctx.data import TokenFile
from longctx.evaluate.registry import EvaluationError, plain_settings, register
from longctx.models.loss import window_nll  # noqa: F401  (also this module's: perplexity of windows)

log = logging.getLogger(__name__)


def select_documents(data: TokenFile, length: int, max_documents, min_documents: int) -> list[int]:
    """The first ``max_documents`` documents with at least ``length`` tokens; too few is an error."""
    docs = data.documents_at_least(length)
    if len(docs) < min_documents:
        raise EvaluationError(
            f"{data.prefix}: only {len(docs)} of {len(data)} documents have at least {length} tokens; "
            f"need {min_documents} (evaluate.perplexity.min_documents)"
        )
    return docs[:max_documents] if max_documents else docs


def sliding_windows(n_tokens: int, length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored target) of each window over a document of ``n_tokens``.

    Windows start every ``stride`` tokens until one reaches the end; each scores the targets after
    the previous window's end, so every token but the first is scored exactly once.
    """
    out, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + length, n_tokens)
        out.append((begin, end, max(prev_end, 1)))
        prev_end = end
        if end == n_tokens:
            break
    return out


def settings(section: dict) -> dict:
    """The section's keys but the corpus and split, whose token files come as ``data_prefix``."""
    return {k: v for k, v in plain_settings(section).items() if k not in ("corpus", "split")}


@register("perplexity", order=10, reads_tokens=True, settings=settings)
def evaluate_perplexity(model, tokenizer, length: int, *, data_prefix, mode="truncate", stride=256,
                        max_documents=None, min_documents=1, chunk_size=4096, batch_tokens=16384,
                        document_tokens=None, **_):
    if mode not in ("truncate", "sliding"):
        raise EvaluationError(f"evaluate.perplexity.mode: unknown mode {mode!r}")
    if mode == "sliding" and document_tokens is not None and document_tokens < length:
        raise EvaluationError(f"evaluate.perplexity.document_tokens ({document_tokens}) is below the "
                              f"evaluation length {length}")
    if data_prefix is None:
        raise EvaluationError("perplexity: no token files given (--data)")
    data = TokenFile.open(data_prefix)
    # sliding over documents cut to document_tokens: the same documents at every length
    needed = max(length, document_tokens or 0) if mode == "sliding" else length
    docs = select_documents(data, needed, max_documents, min_documents)
    device = next(model.parameters()).device
    per_doc, started = [], time.time()
    if mode == "truncate":
        batch = max(1, batch_tokens // length)
        for k in range(0, len(docs), batch):
            ids = docs[k : k + batch]
            windows = torch.from_numpy(np.stack([np.asarray(data.document(i)[:length], dtype=np.int64) for i in ids]))
            sums, n = window_nll(model, windows.to(device), chunk_size=chunk_size)
            per_doc += [(s, n) for s in sums]
            log.info("perplexity@%d: %d/%d documents, %.0f tokens/s", length, len(per_doc), len(docs),
                     len(per_doc) * length / (time.time() - started))
    else:
        for i in docs:
            doc = np.asarray(data.document(i), dtype=np.int64)
            if document_tokens:
                doc = doc[:document_tokens]
            total, count = 0.0, 0
            for begin, end, first_target in sliding_windows(len(doc), length, stride):
                window = torch.from_numpy(doc[begin:end])[None].to(device)
                sums, n = window_nll(model, window, score_from=first_target - begin - 1, chunk_size=chunk_size)
                total, count = total + sums[0], count + n
            per_doc.append((total, count))
            log.info("perplexity@%d (sliding, stride %d): %d/%d documents", length, stride, len(per_doc), len(docs))
    mean_nll = float(np.mean([s / n for s, n in per_doc]))
    token_nll = sum(s for s, _ in per_doc) / sum(n for _, n in per_doc)
    return {
        "eval": "perplexity",
        "length": length,
        "mode": mode,
        "stride": stride if mode == "sliding" else None,
        "documents": len(docs),
        "documents_too_short": len(data) - len(data.documents_at_least(needed)),
        "document_tokens": document_tokens if mode == "sliding" else length,
        "document_ids": [data.meta["document_ids"][i] for i in docs],
        "metrics": {
            "perplexity": math.exp(mean_nll),
            "nll": mean_nll,
            "perplexity_token_weighted": math.exp(token_nll),
        },
        "seconds": time.time() - started,
    }

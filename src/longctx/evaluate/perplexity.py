"""Perplexity by length (PI, YaRN, LongRoPE protocols).

``truncate``: the first N tokens of each document, one forward each (YaRN/LongRoPE). By default
the documents are those with at least N tokens, a different set at each length; with
``min_document_tokens`` they are chosen once, among documents of at least that many tokens, and
every length reads the same documents (YaRN's and LongRoPE's ``--dataset-min-tokens 131072
--samples 10 --truncate``). ``sliding``: windows of N tokens moved by a stride S over each document
(PI's S=256, documents cut to ``document_tokens``, e.g. 32768); each window scores the tokens no
earlier window scored, the last window ends at the document's end. Documents too short are left
out and counted. Perplexity = exp(mean over documents of each document's mean token NLL); the
token-weighted figure is reported too.

``bos`` (on by default, where the model has a BOS token): every window is BOS + the next N-1 text
tokens, as the released codes do (jquesnelle/yarn and microsoft/LongRoPE evaluation/perplexity.py:
the text is tokenized without special tokens, then ``add_start_token`` puts BOS before every
window, sliding ones included). The BOS is context only, never a target, so the first text token
of a window is scored too (predicted from BOS alone). With S = N, ``document_tokens`` = N and
``bos`` off, sliding and truncate are the same computation.
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
            f"need {min_documents} (evaluate.perplexity.min_documents; the tokens a document needs: the length, "
            f"or evaluate.perplexity.min_document_tokens where set)"
        )
    return docs[:max_documents] if max_documents else docs


def document_floor(length: int, min_document_tokens) -> int:
    """How many tokens a document needs to be evaluated at ``length`` in truncate mode.

    ``min_document_tokens`` is null (the length itself: each length its own documents), a number
    (every length the same documents), or a list of numbers: the smallest one that holds the length
    (LongRoPE's scripts: documents of >= 131072 tokens up to 128k, of >= 262144 at 256k)."""
    if min_document_tokens is None:
        return length
    floors = sorted([min_document_tokens] if isinstance(min_document_tokens, int) else min_document_tokens)
    fits = [f for f in floors if f >= length]
    if not fits:
        raise EvaluationError(f"evaluate.perplexity.min_document_tokens ({max(floors)}) is below the evaluation "
                              f"length {length}: a document that short has no {length} tokens to read")
    return fits[0]


def bos_id(model, tokenizer, wanted: bool) -> int | None:
    """The BOS token id to start each window with: None when off or when the model has none."""
    if not wanted:
        return None
    found = getattr(tokenizer, "bos_token_id", None) if tokenizer is not None else None
    return found if found is not None else getattr(model.config, "bos_token_id", None)


def sliding_windows(n_tokens: int, length: int, stride: int, first_target: int = 1) -> list[tuple[int, int, int]]:
    """(begin, end, first scored target) of each window of ``length`` text tokens over a document of
    ``n_tokens``.

    Windows start every ``stride`` tokens (at most ``length``) until one reaches the end; each scores
    the targets after the previous window's end, so every token from ``first_target`` on is scored
    exactly once (``first_target`` 0 when a BOS before each window lets the first token be scored).
    """
    out, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + length, n_tokens)
        out.append((begin, end, max(prev_end, first_target)))
        prev_end = end
        if end == n_tokens:
            break
    return out


def _with_bos(tokens: np.ndarray, bos: int | None) -> np.ndarray:
    tokens = np.asarray(tokens, dtype=np.int64)
    return tokens if bos is None else np.concatenate([np.asarray([bos], dtype=np.int64), tokens])


def settings(section: dict) -> dict:
    """The section's keys but the corpus and split, whose token files come as ``data_prefix``."""
    return {k: v for k, v in plain_settings(section).items() if k not in ("corpus", "split")}


@register("perplexity", order=10, reads_tokens=True, settings=settings)
def evaluate_perplexity(model, tokenizer, length: int, *, data_prefix, mode="truncate", stride=256,
                        max_documents=None, min_documents=1, chunk_size=4096, batch_tokens=16384,
                        document_tokens=None, min_document_tokens=None, bos=True, **_):
    if mode not in ("truncate", "sliding"):
        raise EvaluationError(f"evaluate.perplexity.mode: unknown mode {mode!r}")
    if mode == "sliding" and min_document_tokens is not None:
        raise EvaluationError("evaluate.perplexity.min_document_tokens is for mode truncate; sliding windows "
                              "read the same documents at every length through document_tokens")
    start = bos_id(model, tokenizer, bos)
    width = length - (start is not None)  # text tokens per window
    if mode == "sliding" and document_tokens is not None and document_tokens < width:
        raise EvaluationError(f"evaluate.perplexity.document_tokens ({document_tokens}) is below the {width} text "
                              f"tokens of a window of {length}")
    if mode == "sliding" and stride > width:
        raise EvaluationError(f"evaluate.perplexity.stride ({stride}) exceeds the {width} text tokens of a window "
                              f"of {length}: tokens between windows would go unscored")
    if data_prefix is None:
        raise EvaluationError("perplexity: no token files given (--data)")
    # before the token files: a length above min_document_tokens fails at once
    needed = max(length, document_tokens or 0) if mode == "sliding" else document_floor(length, min_document_tokens)
    data = TokenFile.open(data_prefix)
    docs = select_documents(data, needed, max_documents, min_documents)
    device = next(model.parameters()).device
    per_doc, started = [], time.time()
    if mode == "truncate":
        batch = max(1, batch_tokens // length)
        for k in range(0, len(docs), batch):
            ids = docs[k : k + batch]
            windows = torch.from_numpy(np.stack([_with_bos(data.document(i)[:width], start) for i in ids]))
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
            for begin, end, first in sliding_windows(len(doc), width, stride, first_target=int(start is None)):
                window = torch.from_numpy(_with_bos(doc[begin:end], start))[None].to(device)
                # the hidden state that predicts text token `first` sits one before it in the window
                sums, n = window_nll(model, window, score_from=first - begin - (start is None), chunk_size=chunk_size)
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
        "bos": start is not None,
        "documents": len(docs),
        "documents_too_short": len(data) - len(data.documents_at_least(needed)),
        "documents_at_least": needed,  # tokens a document needed to be chosen
        "document_tokens": document_tokens if mode == "sliding" else length,
        "document_ids": [data.meta["document_ids"][i] for i in docs],
        "metrics": {
            "perplexity": math.exp(mean_nll),
            "nll": mean_nll,
            "perplexity_token_weighted": math.exp(token_nll),
        },
        "seconds": time.time() - started,
    }

"""Perplexity by length (PI, YaRN, LongRoPE protocols).

``truncate``: the first N tokens of every document with at least N tokens, one forward each
(YaRN/LongRoPE). ``sliding``: windows of N tokens moved by a stride S over each document (PI's
S=256); each window scores the tokens no earlier window scored. Perplexity = exp(mean over
documents of each document's mean token NLL); the token-weighted figure is reported too.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

from longctx.data import TokenFile
from longctx.evaluate.registry import EvaluationError, register
from longctx.loss import chunked_nll

log = logging.getLogger(__name__)


@torch.no_grad()
def window_nll(model, windows: torch.Tensor, score_from: int = 0, chunk_size: int = 4096):
    """Summed NLL of tokens ``score_from+1 ..`` in each window [B, N]; returns ([B] sums, count per window)."""
    body = model.get_decoder()
    hidden = body(input_ids=windows, use_cache=False).last_hidden_state[:, score_from:-1]
    targets = windows[:, score_from + 1 :]
    sums = []
    for b in range(windows.shape[0]):
        s, n = chunked_nll(hidden[b], model.get_output_embeddings(), targets[b], chunk_size)
        sums.append(float(s))
    return sums, targets.shape[1]


def select_documents(data: TokenFile, length: int, max_documents, min_documents: int) -> list[int]:
    docs = data.documents_at_least(length)
    if len(docs) < min_documents:
        raise EvaluationError(
            f"{data.prefix}: only {len(docs)} of {len(data)} documents have at least {length} tokens; "
            f"need {min_documents} (evaluate.perplexity.min_documents)"
        )
    return docs[:max_documents] if max_documents else docs


@register("perplexity")
def evaluate_perplexity(model, tokenizer, length: int, *, data_prefix, mode="truncate", stride=256,
                        max_documents=None, min_documents=1, chunk_size=4096, batch_tokens=16384,
                        document_tokens=None, **_):
    data = TokenFile.open(data_prefix)
    docs = select_documents(data, length, max_documents, min_documents)
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
    elif mode == "sliding":
        for i in docs:
            doc = np.asarray(data.document(i), dtype=np.int64)
            if document_tokens:
                doc = doc[:document_tokens]
            total, count, prev_end = 0.0, 0, 0
            for begin in range(0, max(len(doc) - length, 0) + 1, stride):
                end = begin + length
                window = torch.from_numpy(doc[begin:end])[None].to(device)
                # score only targets after the previous window's end (the first window scores all)
                score_from = max(prev_end - begin - 1, 0)
                sums, n = window_nll(model, window, score_from=score_from, chunk_size=chunk_size)
                total, count, prev_end = total + sums[0], count + n, end
            per_doc.append((total, count))
    else:
        raise EvaluationError(f"evaluate.perplexity.mode: unknown mode {mode!r}")
    mean_nll = float(np.mean([s / n for s, n in per_doc]))
    token_nll = sum(s for s, _ in per_doc) / sum(n for _, n in per_doc)
    return {
        "eval": "perplexity",
        "length": length,
        "mode": mode,
        "stride": stride if mode == "sliding" else None,
        "documents": len(docs),
        "documents_too_short": len(data) - len(data.documents_at_least(length)),
        "document_ids": [data.meta["document_ids"][i] for i in docs],
        "metrics": {
            "perplexity": math.exp(mean_nll),
            "nll": mean_nll,
            "perplexity_token_weighted": math.exp(token_nll),
        },
        "seconds": time.time() - started,
    }

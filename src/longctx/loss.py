"""Causal LM loss with the LM head applied in chunks, so full [T, vocab] logits never exist.

At 128k tokens and a 32k vocabulary, full fp32 logits are 16 GB per sequence; chunking keeps one
chunk's logits alive at a time (and, with gradients, recomputes them in the backward pass).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _chunk_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = (hidden @ weight.t()).float()
    return F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")


def chunked_nll(hidden: torch.Tensor, lm_head: torch.nn.Module, targets: torch.Tensor, chunk_size: int = 4096):
    """Sum of token NLLs and the number of scored tokens.

    ``hidden`` [N, H] are final hidden states, ``targets`` [N] the next-token ids (-100 = ignore).
    """
    weight = lm_head.weight
    total = hidden.new_zeros((), dtype=torch.float32)
    for a in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[a : a + chunk_size], targets[a : a + chunk_size]
        if torch.is_grad_enabled() and h.requires_grad:
            total = total + checkpoint(_chunk_nll, h, weight, t, use_reentrant=False)
        else:
            total = total + _chunk_nll(h, weight, t)
    return total, int((targets != -100).sum())


def causal_lm_nll(model, input_ids: torch.Tensor, position_ids=None, chunk_size: int = 4096, labels=None):
    """(sum of NLL, tokens scored) for next-token prediction over ``input_ids`` [B, T]."""
    body = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    out = body(input_ids=input_ids, position_ids=position_ids, use_cache=False)
    hidden = out.last_hidden_state[:, :-1]
    targets = (labels if labels is not None else input_ids)[:, 1:]
    return chunked_nll(hidden.reshape(-1, hidden.shape[-1]), model.get_output_embeddings(),
                       targets.reshape(-1), chunk_size)

"""Causal LM loss with the LM head applied in chunks, so full [T, vocab] logits never exist.

At 128k tokens and a 32k vocabulary, full fp32 logits are 16 GB per sequence; chunking keeps one
chunk's logits alive at a time.

With gradients, the fused path (``LinearCrossEntropy``) computes each chunk's gradients with
respect to the hidden states and the head weight in the forward pass, as Liger-Kernel's fused
linear cross-entropy does, so the backward pass is one multiply and the logits are computed once.
It needs the head weight itself; a head that is not a plain ``nn.Linear`` (a LoRA-wrapped head, or
ZeRO-3 partitioned weights that only exist inside the module's forward) takes the checkpointed
path, which calls the head module per chunk and recomputes that chunk's logits in the backward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _chunk_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = (hidden @ weight.t()).float()
    return F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")


def _chunk_nll_module(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, ignore_index=-100, reduction="sum")


class LinearCrossEntropy(torch.autograd.Function):
    """Sum of token NLLs of ``hidden @ weight.T``, chunk by chunk, gradients computed in the forward.

    ``compute_dtype`` is the matmul dtype (bf16 under mixed precision); softmax is in float32.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size: int, compute_dtype):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w = weight.to(compute_dtype)
        grad_hidden = torch.empty_like(hidden) if need_h else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        # packed pretraining/fine-tuning windows rarely ignore a token: skip a full pass over the logits
        all_valid = bool((targets != -100).all())
        for a in range(0, hidden.shape[0], chunk_size):
            h, t = hidden[a : a + chunk_size].to(compute_dtype), targets[a : a + chunk_size]
            logits = (h @ w.t()).float()
            valid = t != -100
            safe = t.clamp(min=0)
            lse = torch.logsumexp(logits, dim=-1)
            total += ((lse - logits.gather(1, safe[:, None])[:, 0]) * valid).sum()
            # d(sum nll)/d logits = softmax - one_hot(target), zero on ignored rows
            d = torch.exp_(logits.sub_(lse[:, None]))
            d[torch.arange(len(t), device=t.device), safe] -= 1.0
            if not all_valid:
                d.mul_(valid[:, None])
            d = d.to(compute_dtype)
            if need_h:
                grad_hidden[a : a + chunk_size] = (d @ w).to(hidden.dtype)
            if need_w:
                grad_weight += (d.t() @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        gh = grad_hidden * grad_total.to(grad_hidden.dtype) if grad_hidden is not None else None
        gw = (grad_weight * grad_total).to(ctx.weight_dtype) if grad_weight is not None else None
        return gh, gw, None, None, None


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The dtype the LM head's matmul would run in here (autocast's, else the hidden states')."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return hidden.dtype


def chunked_nll(hidden: torch.Tensor, lm_head: torch.nn.Module, targets: torch.Tensor, chunk_size: int = 4096):
    """Sum of token NLLs and the number of scored tokens.

    ``hidden`` [N, H] are final hidden states, ``targets`` [N] the next-token ids (-100 = ignore).
    """
    count = int((targets != -100).sum())
    training = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in lm_head.parameters()))
    if training and type(lm_head) is torch.nn.Linear and lm_head.bias is None and lm_head.weight.numel() > 0:
        total = LinearCrossEntropy.apply(hidden, lm_head.weight, targets, chunk_size, _compute_dtype(hidden))
        return total, count
    total = hidden.new_zeros((), dtype=torch.float32)
    for a in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[a : a + chunk_size], targets[a : a + chunk_size]
        if training:
            total = total + checkpoint(_chunk_nll_module, h, lm_head, t, use_reentrant=False)
        else:
            total = total + _chunk_nll(h, lm_head.weight, t)
    return total, count


def causal_lm_nll(model, input_ids: torch.Tensor, position_ids=None, chunk_size: int = 4096, labels=None,
                  targets=None, **model_kwargs):
    """(sum of NLL, tokens scored) for next-token prediction over ``input_ids`` [B, T].

    ``labels`` are shifted here (label t+1 is predicted at t, as in transformers); ``targets``, if
    given instead, are already aligned (target t is predicted at position t; -100 = not scored) -
    the form a shard of a sequence needs. ``model_kwargs`` (attention masks, flash-attn varlen
    lengths) go to the decoder.
    """
    body = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    out = body(input_ids=input_ids, position_ids=position_ids, use_cache=False, **model_kwargs)
    if targets is None:
        hidden = out.last_hidden_state[:, :-1]
        targets = (labels if labels is not None else input_ids)[:, 1:]
    else:
        hidden = out.last_hidden_state
    return chunked_nll(hidden.reshape(-1, hidden.shape[-1]), model.get_output_embeddings(),
                       targets.reshape(-1), chunk_size)


@torch.no_grad()
def window_nll(model, windows: torch.Tensor, score_from: int = 0, chunk_size: int = 4096):
    """Summed NLL of tokens ``score_from+1 ..`` in each window [B, N]: ([B] sums as floats, tokens scored
    per window). What perplexity by length and the LongRoPE search's fitness score: one decoder
    forward, the LM head applied row by row in chunks."""
    hidden = model.get_decoder()(input_ids=windows, use_cache=False).last_hidden_state[:, score_from:-1]
    targets = windows[:, score_from + 1 :]
    head = model.get_output_embeddings()
    sums = torch.stack([chunked_nll(hidden[b], head, targets[b], chunk_size)[0] for b in range(windows.shape[0])])
    return sums.double().tolist(), targets.shape[1]

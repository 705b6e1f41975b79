"""Greedy generation with the KV cache that stays exact across a RoPE factor switch.

A method that changes the rotation of *earlier* positions when the sequence grows (LongRoPE's
short/long factor sets at the switch length; dynamic NTK and dynamic YaRN at every length beyond
L) invalidates the cache: keys already cached were rotated for the shorter sequence. Whenever
``longctx.rope.cache_is_stale`` says so, the whole sequence is recomputed, so the next tokens
equal those of a from-scratch forward.
"""

from __future__ import annotations

import torch

from longctx.rope import cache_is_stale
from longctx.rope import switch_lengths as _rope_switch_lengths


def switch_lengths(config) -> list[int]:
    """Fixed sequence lengths at which the model's RoPE changes the rotation of earlier positions."""
    return _rope_switch_lengths(config)


@torch.no_grad()
def greedy_generate(model, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id=None) -> torch.Tensor:
    """Greedy continuation of ``input_ids`` [1, T]; returns the new tokens [1, <= max_new_tokens]."""
    from transformers import DynamicCache

    seq = input_ids
    cache, new = None, []
    for _ in range(max_new_tokens):
        length = seq.shape[1]
        # the cached keys were rotated for a sequence of length - 1 tokens; the rotation is chosen
        # by the length of the sequence being attended, which is now `length`
        if cache is None or cache_is_stale(model.config, length - 1, length):
            cache = DynamicCache(config=model.config)
            out = model(input_ids=seq, past_key_values=cache, use_cache=True)
        else:
            out = model(input_ids=seq[:, -1:], past_key_values=cache, use_cache=True,
                        position_ids=torch.tensor([[length - 1]], device=seq.device))
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        new.append(token)
        seq = torch.cat([seq, token], dim=1)
        if eos_token_id is not None and int(token) == eos_token_id:
            break
    return torch.cat(new, dim=1)


def _safe_to_batch(lengths: list[int], max_new_tokens: int, switches: list[int], dynamic_beyond) -> bool:
    """True when every row of a batch would get the same RoPE rotation as it would alone.

    The rotary module picks a length-dependent rotation from the longest row (position_ids.max()
    + 1), so rows of different lengths share it. That is exact unless a factor switch lies between
    the shortest and the longest row at some step, or a dynamic method (its scale grows with every
    length beyond L) sees any row beyond L.
    """
    lo, hi = min(lengths), max(lengths)
    if lo == hi:
        return True
    if dynamic_beyond is not None and hi + max_new_tokens > dynamic_beyond:
        return False
    return not any(lo - 1 <= s <= hi + max_new_tokens for s in switches)


def plan_batches(lengths: list[int], max_new_tokens: int, *, max_batch_size: int = 16,
                 max_batch_tokens: int = 32768, switches: list[int] = (), dynamic_beyond=None) -> list[list[int]]:
    """Group prompt indices into batches of similar length (least padding).

    A batch holds at most ``max_batch_size`` prompts and at most ``max_batch_tokens`` tokens once
    padded to its longest prompt plus the new tokens; a prompt longer than that budget runs alone.
    Rows are only batched together where the RoPE method cannot tell them apart (``_safe_to_batch``).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches:
            current = batches[-1]
            rows = [lengths[j] for j in current] + [lengths[i]]
            padded = (max(rows) + max_new_tokens) * len(rows)
            if (len(rows) <= max_batch_size and padded <= max_batch_tokens
                    and _safe_to_batch(rows, max_new_tokens, list(switches), dynamic_beyond)):
                current.append(i)
                continue
        batches.append([i])
    return batches


@torch.no_grad()
def batched_greedy_generate(model, prompts: list[list[int]], max_new_tokens: int, *, eos_token_id=None,
                            pad_token_id: int = 0, max_batch_size: int = 16,
                            max_batch_tokens: int = 32768) -> list[list[int]]:
    """Greedy continuations of many prompts (token id lists), batched where lengths allow.

    Prompts are grouped by length (``plan_batches``), left-padded with an attention mask and
    position ids counted from each row's first real token, and decoded with the KV cache. A row
    stops after ``eos_token_id``; the result keeps the prompts' order, each list holding the new
    tokens (the EOS included, like ``greedy_generate``). Crossing a RoPE factor switch recomputes
    the cache, as in ``greedy_generate``.
    """
    from transformers import DynamicCache

    if not prompts:
        return []
    if any(len(p) == 0 for p in prompts):
        raise ValueError("batched_greedy_generate: empty prompt")
    device = next(model.parameters()).device
    from longctx.rope import length_dependent_beyond

    results: list[list[int]] = [[] for _ in prompts]
    for batch in plan_batches([len(p) for p in prompts], max_new_tokens, max_batch_size=max_batch_size,
                              max_batch_tokens=max_batch_tokens, switches=switch_lengths(model.config),
                              dynamic_beyond=length_dependent_beyond(model.config)):
        width = max(len(prompts[i]) for i in batch)
        seq = torch.full((len(batch), width), pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(batch), width), dtype=torch.long, device=device)
        for row, i in enumerate(batch):
            seq[row, width - len(prompts[i]):] = torch.tensor(prompts[i], device=device)
            mask[row, width - len(prompts[i]):] = 1
        done = torch.zeros(len(batch), dtype=torch.bool, device=device)
        new = []
        cache = None
        for _ in range(max_new_tokens):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            length = int(positions.max()) + 1  # what the rotary module sees as the sequence length
            if cache is None or cache_is_stale(model.config, length - 1, length):
                cache = DynamicCache(config=model.config)
                # logits of the last position only: the LM head over a long prompt is a large share of the work
                out = model(input_ids=seq, attention_mask=mask, position_ids=positions, past_key_values=cache,
                            use_cache=True, logits_to_keep=1)
            else:
                out = model(input_ids=seq[:, -1:], attention_mask=mask, position_ids=positions[:, -1:],
                            past_key_values=cache, use_cache=True)
            token = out.logits[:, -1].argmax(-1)
            token = torch.where(done, torch.full_like(token, pad_token_id), token)
            new.append(token)
            if eos_token_id is not None:
                done = done | (token == eos_token_id)
            seq = torch.cat([seq, token[:, None]], dim=1)
            # finished rows keep decoding padding; their outputs are dropped below
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            if bool(done.all()):
                break
        tokens = torch.stack(new, dim=1).tolist()
        for row, i in enumerate(batch):
            out_row = []
            for t in tokens[row]:
                out_row.append(t)
                if eos_token_id is not None and t == eos_token_id:
                    break
            results[i] = out_row
    return results

"""Greedy generation with the KV cache that stays exact across a RoPE factor switch.

A method that changes the frequencies of *earlier* positions when the sequence grows past a
length (LongRoPE's short/long factor sets) invalidates the cache at that point: keys already
cached were rotated with the old factors. Crossing such a length, the whole sequence is
recomputed, so the next tokens equal those of a from-scratch forward.
"""

from __future__ import annotations

import torch

from longctx.rope.registry import CUSTOM_TYPES


def switch_lengths(config) -> list[int]:
    """Sequence lengths at which the model's RoPE changes the rotation of earlier positions."""
    params = config.rope_parameters
    rope_type = params.get("rope_type")
    if rope_type == "longrope":
        return [int(params["original_max_position_embeddings"])]
    if rope_type in CUSTOM_TYPES:
        return sorted(int(x) for x in CUSTOM_TYPES[rope_type].switch_lengths(params))
    return []


@torch.no_grad()
def greedy_generate(model, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id=None) -> torch.Tensor:
    """Greedy continuation of ``input_ids`` [1, T]; returns the new tokens [1, <= max_new_tokens]."""
    from transformers import DynamicCache

    switches = switch_lengths(model.config)
    seq = input_ids
    cache, new = None, []
    for _ in range(max_new_tokens):
        length = seq.shape[1]
        # the factor set is chosen by the length of the sequence being attended: recompute when
        # the set used for the cached keys (prefix length - 1) differs from the one for `length`
        crossed = cache is not None and any((length - 1) <= s < length for s in switches)
        if cache is None or crossed:
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

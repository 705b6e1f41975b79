"""The small LLaMA the embedded default pretrains from scratch (``model.pretrain`` config section)."""

from __future__ import annotations

import torch


def new_pretrain_model(pretrain: dict, vocab_size: int, bos: int, eos: int, seed: int):
    """A randomly initialised ``LlamaForCausalLM`` of the section's shape (seeded), RoPE unscaled."""
    from transformers import LlamaConfig, LlamaForCausalLM

    p = pretrain
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=p["hidden_size"],
        intermediate_size=p["intermediate_size"],
        num_hidden_layers=p["num_layers"],
        num_attention_heads=p["num_heads"],
        num_key_value_heads=p["num_kv_heads"],
        max_position_embeddings=p["context"],
        rope_parameters={"rope_type": "default", "rope_theta": float(p["rope_theta"])},
        bos_token_id=bos,
        eos_token_id=eos,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)

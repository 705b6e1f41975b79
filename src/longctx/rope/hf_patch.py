"""Teach transformers our custom rope types, so ``import longctx`` is all a checkpoint needs.

Three hooks, all idempotent: each custom type gets an init function in ``ROPE_INIT_FUNCTIONS``
(used when a rotary module is built), a validation method on the config mixin (so transformers
does not warn about an unknown type), and the rotary modules of the RoPE model families we
support get a forward that computes our angles when their rope_type is one of ours.
"""

from __future__ import annotations

import importlib
from functools import wraps

import torch

from longctx.rope.registry import CUSTOM_TYPES

# model families whose rotary module is the standard (config) -> forward(x, position_ids) kind
ROTARY_CLASSES = [
    ("transformers.models.llama.modeling_llama", "LlamaRotaryEmbedding"),
    ("transformers.models.mistral.modeling_mistral", "MistralRotaryEmbedding"),
    ("transformers.models.qwen2.modeling_qwen2", "Qwen2RotaryEmbedding"),
    ("transformers.models.qwen3.modeling_qwen3", "Qwen3RotaryEmbedding"),
]

_installed = False


def _init_fn(rope_type: str):
    def init(config, device=None, seq_len=None, layer_type=None):
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        inv_freq, scale = CUSTOM_TYPES[rope_type].inv_freq(config.rope_parameters, head_dim, seq_len)
        return inv_freq.to(device) if device is not None else inv_freq, scale

    return init


def _validator(config_self, rope_parameters, ignore_keys=None):
    # parameters were validated when the method built them (longctx.rope.build_rope_parameters)
    return None


def _patch_forward(cls):
    if getattr(cls.forward, "_longctx_patched", False):
        return
    original = cls.forward

    @wraps(original)
    @torch.no_grad()
    def forward(self, x, position_ids, *args, **kwargs):
        rope_type = getattr(self, "rope_type", None)
        custom = CUSTOM_TYPES.get(rope_type) if isinstance(rope_type, str) else None
        if custom is None:
            return original(self, x, position_ids, *args, **kwargs)
        head_dim = getattr(self.config, "head_dim", None) or (
            self.config.hidden_size // self.config.num_attention_heads
        )
        with torch.autocast(device_type=x.device.type, enabled=False):
            angles, scale = custom.angles_for(self.config.rope_parameters, head_dim, position_ids.to(x.device))
            emb = torch.cat((angles, angles), dim=-1)
            cos, sin = emb.cos() * scale, emb.sin() * scale
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)

    forward._longctx_patched = True
    cls.forward = forward


def install() -> None:
    global _installed
    if _installed:
        return
    from transformers import modeling_rope_utils

    for name in CUSTOM_TYPES:
        modeling_rope_utils.ROPE_INIT_FUNCTIONS[name] = _init_fn(name)
        setattr(modeling_rope_utils.RotaryEmbeddingConfigMixin, f"_validate_{name}_rope_parameters", _validator)
    for module_name, class_name in ROTARY_CLASSES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        cls = getattr(module, class_name, None)
        if cls is not None:
            _patch_forward(cls)
    _installed = True

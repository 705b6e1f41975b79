"""Teach transformers our custom rope types, so ``import longctx`` is all a checkpoint needs.

Three hooks, all idempotent: each custom type gets an init function in ``ROPE_INIT_FUNCTIONS``
(used when a rotary module is built), a validation method on the config mixin (so transformers
does not warn about an unknown type), and the rotary modules of the RoPE model families we
support get a forward that computes our angles when their rope_type is one of ours.

Methods that scale queries and keys differently (xPos) cannot be written as cos/sin; for them
the SDPA attention function registered in transformers' ``AttentionInterface`` is wrapped: when
the attention module's rope_type asks for it, the rotated queries and keys are scaled before the
original SDPA function runs. Every other model goes straight to the original.

The same forward makes transformers' built-in ``dynamic`` type stateless for models extended by
this package (their config carries ``longctx_rope``): the built-in module keeps the frequencies
of the longest sequence seen so far, so a shorter sequence (still beyond L) that follows a longer
one would otherwise be rotated with the longer one's scale. Per forward, the frequencies are
transformers' own function of the current length.

``install_with_transformers`` (what ``import longctx`` calls) installs the hooks at once when
transformers is already imported, else right after ``transformers`` itself is first imported: code
that never touches transformers (the workflow's planning in Snakemake, the config checks) does
not pay for importing it, and a plain ``from_pretrained`` after ``import longctx`` still finds the
hooks (the package ``transformers`` finishes importing before any of its model modules load).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
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


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _init_fn(rope_type: str):
    def init(config, device=None, seq_len=None, layer_type=None):
        inv_freq, scale = CUSTOM_TYPES[rope_type].inv_freq(config.rope_parameters, _head_dim(config), seq_len)
        return inv_freq.to(device) if device is not None else inv_freq, scale

    return init


def _validator(config_self, rope_parameters, ignore_keys=None):
    # parameters were validated when the method built them (longctx.rope.build_rope_parameters)
    return None


def _stateless_dynamic_angles(module, position_ids: torch.Tensor):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    # a tensor length, as transformers' own update passes it (the new base is then float32 math)
    seq_len = torch.max(position_ids) + 1
    inv_freq, scale = ROPE_INIT_FUNCTIONS["dynamic"](module.config, position_ids.device, seq_len=seq_len)
    return position_ids[..., None].float() * inv_freq.float(), scale


def angles_function(module):
    """``f(position_ids) -> (angles [B, T, d/2] float32, cos/sin scale)`` when this package computes
    the module's rotation, else None (the module's own forward is right)."""
    rope_type = getattr(module, "rope_type", None)
    if not isinstance(rope_type, str):
        return None
    custom = CUSTOM_TYPES.get(rope_type)
    if custom is not None:
        return lambda pos: custom.angles_for(module.config.rope_parameters, _head_dim(module.config), pos)
    if rope_type == "dynamic" and getattr(module.config, "longctx_rope", None):
        return lambda pos: _stateless_dynamic_angles(module, pos)
    return None


def attention_scales_for(module, query: torch.Tensor, key: torch.Tensor, position_ids):
    """(q_scale, k_scale) for an attention module whose rope type scales q and k, else None.

    Keys are taken to sit at consecutive positions ending at the last query's (true for a plain
    forward, for cached decoding and for left-padded rows, whose padding is masked anyway).
    """
    config = getattr(module, "config", None)
    params = getattr(config, "rope_parameters", None)
    custom = CUSTOM_TYPES.get(params.get("rope_type")) if isinstance(params, dict) else None
    if custom is None or custom.attention_scales is None:
        return None
    q_len, k_len = query.shape[-2], key.shape[-2]
    if position_ids is None:
        position_ids = torch.arange(k_len - q_len, k_len, device=query.device)[None]
    q_pos = position_ids.to(query.device).expand(query.shape[0], q_len).float()
    k_pos = q_pos[:, -1:] - torch.arange(k_len - 1, -1, -1, device=query.device, dtype=torch.float32)
    return custom.attention_scales(params, query.shape[-1], q_pos, k_pos)


def _wrap_sdpa() -> None:
    from transformers.modeling_utils import AttentionInterface

    inner = AttentionInterface._global_mapping["sdpa"]
    if getattr(inner, "_longctx_wrapped", False):
        return

    @wraps(inner)
    def sdpa(module, query, key, value, attention_mask, *args, **kwargs):
        scales = attention_scales_for(module, query, key, kwargs.get("position_ids"))
        if scales is not None:
            q_scale, k_scale = scales
            query = (query.float() * q_scale).to(query.dtype)
            key = (key.float() * k_scale).to(key.dtype)
        return inner(module, query, key, value, attention_mask, *args, **kwargs)

    sdpa._longctx_wrapped = True
    AttentionInterface.register("sdpa", sdpa)


def _patch_forward(cls):
    if getattr(cls.forward, "_longctx_patched", False):
        return
    original = cls.forward

    @wraps(original)
    @torch.no_grad()
    def forward(self, x, position_ids, *args, **kwargs):
        angles_of = angles_function(self)
        if angles_of is None:
            return original(self, x, position_ids, *args, **kwargs)
        custom = CUSTOM_TYPES.get(self.rope_type)
        if custom is not None and custom.attention_scales is not None:
            implementation = getattr(self.config, "_attn_implementation", None)
            if implementation not in (None, "sdpa"):
                from longctx.rope.registry import RopeMethodError

                raise RopeMethodError(f"rope type {self.rope_type} scales queries and keys inside SDPA attention; "
                                      f"load the model with attn_implementation='sdpa' (it has {implementation!r})")
        with torch.autocast(device_type=x.device.type, enabled=False):
            angles, scale = angles_of(position_ids.to(x.device))
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
    _wrap_sdpa()
    _installed = True


class _AfterTransformersImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of the ``transformers`` package so ``install`` runs
    as soon as the package has finished importing, then steps aside."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_install(module):
            exec_module(module)
            install()

        spec.loader.exec_module = exec_then_install
        return spec


def install_with_transformers() -> None:
    """``install`` now if transformers is imported, else once it is (see the module's docstring)."""
    if _installed:
        return
    if "transformers" in sys.modules:
        install()
    elif not any(isinstance(f, _AfterTransformersImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTransformersImport())

"""The registry of RoPE scaling methods and the few functions every stage needs from it.

A method is one function ``build(scale, params, geometry) -> rope_parameters`` (the dict
transformers keeps in ``config.rope_parameters``), plus a validator for its parameters. Methods
that transformers has no exact built-in type for also register a *custom rope type*: a function
computing the rotation angles for given positions (see ``CustomRopeType``), which
``longctx.rope.hf_patch`` plugs into the models' rotary embedding modules.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


class RopeMethodError(ValueError):
    """A RoPE method name or parameter is wrong; the message names which."""


@dataclass(frozen=True)
class RopeGeometry:
    """What a method needs to know about the model: head dimension, base and original context."""

    head_dim: int
    base: float
    original_context: int

    @property
    def n_pairs(self) -> int:
        return self.head_dim // 2

    def theta(self, dtype=torch.float64) -> torch.Tensor:
        """theta_i = b^(-2i/d), i = 0 .. d/2-1, the per-pair frequencies of unchanged RoPE."""
        i = torch.arange(0, self.head_dim, 2, dtype=torch.int64).to(dtype)
        return 1.0 / (self.base ** (i / self.head_dim))


@dataclass(frozen=True)
class RopeMethod:
    name: str
    build: Callable[[float, dict, RopeGeometry], dict]
    defaults: dict = field(default_factory=dict)
    validate: Callable[[float, dict, RopeGeometry], None] | None = None
    description: str = ""
    # True when the method changes nothing at inference (e.g. randomized training positions)
    training_only: bool = False


@dataclass(frozen=True)
class CustomRopeType:
    """A rope_type transformers does not have.

    ``inv_freq(rope_parameters, head_dim, seq_len) -> (inv_freq [d/2] float32, cos/sin scale)`` gives
    the frequencies in use for a sequence of ``seq_len`` tokens. ``angles`` (optional) overrides the
    plain ``position * inv_freq`` product, for methods where a position's rotation depends on the
    position itself (LongRoPE's first ``n_hat`` tokens).
    """

    name: str
    inv_freq: Callable[[dict, int, int | None], tuple[torch.Tensor, float]]
    angles: Callable[[dict, int, torch.Tensor], tuple[torch.Tensor, float]] | None = None
    # lengths at which the frequencies of earlier positions change; generation with a KV cache
    # that crosses one must recompute the cache (see longctx.generation)
    switch_lengths: Callable[[dict], list[int]] = lambda rope_parameters: []

    def angles_for(self, rope_parameters: dict, head_dim: int, position_ids: torch.Tensor):
        if self.angles is not None:
            return self.angles(rope_parameters, head_dim, position_ids)
        seq_len = int(position_ids.max()) + 1
        inv_freq, scale = self.inv_freq(rope_parameters, head_dim, seq_len)
        inv_freq = inv_freq.to(position_ids.device, torch.float32)
        return position_ids[..., None].float() * inv_freq, scale


METHODS: dict[str, RopeMethod] = {}
CUSTOM_TYPES: dict[str, CustomRopeType] = {}


def register_method(method: RopeMethod) -> RopeMethod:
    METHODS[method.name] = method
    return method


def register_custom_type(rope_type: CustomRopeType) -> CustomRopeType:
    CUSTOM_TYPES[rope_type.name] = rope_type
    return rope_type


def method_names() -> list[str]:
    return sorted(METHODS)


def get_method(name: str) -> RopeMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise RopeMethodError(f"unknown RoPE method {name!r}; known: {', '.join(method_names())}") from None


def resolve_params(name: str, params: dict | None) -> dict:
    """The method's defaults overlaid with ``params``; an unknown parameter is an error."""
    method = get_method(name)
    params = dict(params or {})
    unknown = set(params) - set(method.defaults)
    if unknown:
        raise RopeMethodError(
            f"RoPE method {name!r} has no parameter(s) {sorted(unknown)}; "
            f"known: {sorted(method.defaults) or 'none'}"
        )
    return {**copy.deepcopy(method.defaults), **params}


def build_rope_parameters(name: str, scale: float, params: dict | None, geometry: RopeGeometry) -> dict:
    """The ``rope_parameters`` dict for method ``name`` at ``scale`` (validated)."""
    method = get_method(name)
    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 1:
        raise RopeMethodError(f"RoPE method {name!r}: scale must be a number >= 1, got {scale!r}")
    full = resolve_params(name, params)
    if method.validate is not None:
        method.validate(float(scale), full, geometry)
    rope_parameters = method.build(float(scale), full, geometry)
    rope_parameters.setdefault("rope_theta", geometry.base)
    return rope_parameters


def geometry_of(config) -> RopeGeometry:
    """RoPE geometry of a transformers config; the original context survives extension."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    meta = getattr(config, "longctx_rope", None) or {}
    base = meta.get("base") or config.rope_parameters["rope_theta"]
    original = meta.get("original_context") or config.max_position_embeddings
    return RopeGeometry(int(head_dim), float(base), int(original))


def rope_spec_of(config) -> dict:
    """The method, scale and parameters an extended checkpoint carries (``none`` if never extended)."""
    meta = getattr(config, "longctx_rope", None)
    if meta:
        return dict(meta)
    return {"method": "none", "scale": 1.0, "params": {}}


def _rotary_modules(model):
    return [(name, m) for name, m in model.named_modules() if name.endswith("rotary_emb")]


def apply_to_model(model, method: str, scale: float, params: dict | None = None):
    """Switch ``model`` to a RoPE method in place and record it in the config (saved with the model).

    The original geometry (base, original context) is kept from the first extension, so a model
    extended twice is described relative to its pretrained RoPE.
    """
    config = model.config
    geometry = geometry_of(config)
    full = resolve_params(method, params)
    rope_parameters = build_rope_parameters(method, scale, full, geometry)
    config.rope_parameters = rope_parameters
    config.longctx_rope = {
        "method": method,
        "scale": float(scale),
        "params": full,
        "base": geometry.base,
        "original_context": geometry.original_context,
    }
    modules = _rotary_modules(model)
    if not modules:
        raise RopeMethodError(f"{type(model).__name__} has no rotary embedding module to rescale")
    for name, module in modules:
        device = module.inv_freq.device
        new = type(module)(config=config).to(device)
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        setattr(parent, name.rsplit(".", 1)[-1], new)
    return model


def _rotary_for(rope_parameters: dict, head_dim: int):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(
        hidden_size=head_dim,
        num_attention_heads=1,
        head_dim=head_dim,
        max_position_embeddings=rope_parameters.get("original_max_position_embeddings", 2048),
        rope_parameters=copy.deepcopy(rope_parameters),
    )
    return LlamaRotaryEmbedding(config)


def cos_sin(rope_parameters: dict, head_dim: int, position_ids: torch.Tensor):
    """cos and sin tables [B, T, head_dim] exactly as a model's attention sees them (float32)."""
    rotary = _rotary_for(rope_parameters, head_dim)
    return rotary(torch.zeros(1, dtype=torch.float32), position_ids)


def inverse_frequencies(rope_parameters: dict, head_dim: int, seq_len: int | None = None) -> torch.Tensor:
    """Per-pair frequencies in use at sequence length ``seq_len`` (for tests, search seeds, plots).

    Start tokens kept at original RoPE (LongRoPE's n_hat) are not reflected: this is the
    frequency of the positions after them.
    """
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope_type = rope_parameters["rope_type"]
    if rope_type in CUSTOM_TYPES:
        return CUSTOM_TYPES[rope_type].inv_freq(rope_parameters, head_dim, seq_len)[0].double()
    rotary = _rotary_for(rope_parameters, head_dim)
    if rope_type == "default":
        return rotary.inv_freq.double()
    inv_freq, _ = ROPE_INIT_FUNCTIONS[rope_type](rotary.config, None, seq_len=seq_len)
    return inv_freq.double()

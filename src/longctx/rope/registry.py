"""The registry of RoPE scaling methods and the few functions every stage needs from it.

A method is one function ``build(scale, params, geometry) -> rope_parameters`` (the dict
transformers keeps in ``config.rope_parameters``), plus a validator for its parameters. Methods
that transformers has no exact built-in type for also register a *custom rope type*: a function
computing the rotation angles for given positions (see ``CustomRopeType``), which
``longctx.rope.hf_patch`` plugs into the models' rotary embedding modules.

Adding a method: one ``build`` function (and a validator) in ``methods.py``, one
``register_method`` call, one test against an independent float64 formula.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch


class RopeMethodError(ValueError):
    """A RoPE method name or parameter is wrong; the message names which."""


def length_at(scale: float, original_context: int) -> int:
    """Tokens at ``scale`` times the original context: an extension's target length."""
    return int(round(float(scale) * original_context))


@dataclass(frozen=True)
class RopeGeometry:
    """What a method needs to know about the model: head dimension, base and original context.

    ``max_position_embeddings`` is the value in the model's config when it differs from the
    original context; transformers' ``dynamic`` type reads its L from there, so it is only used
    when the two agree. ``model_type`` (the config's, e.g. ``llama``, ``mistral``) picks a
    method's per-family defaults (YaRN's alpha and beta).
    """

    head_dim: int
    base: float
    original_context: int
    max_position_embeddings: int | None = None
    model_type: str | None = None

    @property
    def n_pairs(self) -> int:
        return self.head_dim // 2

    def length_at(self, scale: float) -> int:
        return length_at(scale, self.original_context)

    def theta(self, dtype=torch.float64) -> torch.Tensor:
        """theta_i = b^(-2i/d), i = 0 .. d/2-1, the per-pair frequencies of unchanged RoPE."""
        i = torch.arange(0, self.head_dim, 2, dtype=torch.int64).to(dtype)
        return 1.0 / (self.base ** (i / self.head_dim))

    def check(self) -> None:
        if not (isinstance(self.head_dim, int) and self.head_dim >= 2 and self.head_dim % 2 == 0):
            raise RopeMethodError(f"RoPE head dimension must be an even integer >= 2, got {self.head_dim!r}")
        if not (math.isfinite(self.base) and self.base > 1):
            raise RopeMethodError(f"RoPE base (rope_theta) must be a number > 1, got {self.base!r}")
        if not (isinstance(self.original_context, int) and self.original_context >= 1):
            raise RopeMethodError(f"original context must be a positive integer, got {self.original_context!r}")


@dataclass(frozen=True)
class RopeMethod:
    name: str
    build: Callable[[float, dict, RopeGeometry], dict]
    defaults: dict = field(default_factory=dict)
    validate: Callable[[float, dict, RopeGeometry], None] | None = None
    description: str = ""
    # training only: ``positions(batch_size, seq_len, generator, device) -> [B, T] float position ids``
    # drawn afresh for every training batch (Giraffe's randomized positions); inference uses 0..T-1
    training_positions: Callable | None = None
    # defaults that depend on the model: ``(geometry) -> {param: value}``, filling parameters whose
    # default is None and that the variant left unset (YaRN's betas per model family)
    geometry_defaults: Callable[[RopeGeometry], dict] | None = None


@dataclass(frozen=True)
class CustomRopeType:
    """A rope_type transformers does not have.

    ``inv_freq(rope_parameters, head_dim, seq_len) -> (inv_freq [d/2] float32, cos/sin scale)`` gives
    the frequencies in use for a sequence of ``seq_len`` tokens. ``angles`` (optional) overrides the
    plain ``position * inv_freq`` product, for methods where a position's rotation depends on the
    position itself (LongRoPE's first ``n_hat`` tokens); its cos/sin scale is a number or a tensor
    [..., T, 1] of one per position (LongRoPE's first ``n_hat`` tokens are not scaled).

    ``cache_stale(rope_parameters, cached_len, new_len)`` says whether keys cached while the
    sequence had ``cached_len`` tokens are rotated differently once it has ``new_len``: true at a
    LongRoPE factor-set switch, and at every step beyond L for the dynamic methods. Generation
    with a KV cache must then recompute (see ``longctx.evaluate.generation``).
    """

    name: str
    inv_freq: Callable[[dict, int, int | None], tuple[torch.Tensor, float]]
    angles: Callable[[dict, int, torch.Tensor], tuple[torch.Tensor, float]] | None = None
    cache_stale: Callable[[dict, int, int], bool] = lambda rope_parameters, cached_len, new_len: False
    # the fixed lengths at which the rotation changes (LongRoPE's factor-set limits), if any
    switch_lengths: Callable[[dict], list[int]] = lambda rope_parameters: []
    # for methods that scale queries and keys differently, which cos/sin cannot express (xPos):
    # ``(rope_parameters, head_dim, query_positions [B, q], key_positions [B, k]) -> (q_scale
    # [B, 1, q, d], k_scale [B, 1, k, d])``, applied to the rotated q and k inside attention
    attention_scales: Callable | None = None

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


def resolve_for(name: str, params: dict | None, geometry: RopeGeometry) -> dict:
    """``resolve_params``, then the defaults this model's geometry picks for parameters left unset."""
    method = get_method(name)
    full = resolve_params(name, params)
    if method.geometry_defaults is not None:
        for key, value in method.geometry_defaults(geometry).items():
            if full.get(key) is None:
                full[key] = value
    return full


def build_rope_parameters(name: str, scale: float, params: dict | None, geometry: RopeGeometry) -> dict:
    """The ``rope_parameters`` dict for method ``name`` at ``scale`` (validated)."""
    method = get_method(name)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 1:
        raise RopeMethodError(f"RoPE method {name!r}: scale must be a number >= 1, got {scale!r}")
    geometry.check()
    full = resolve_for(name, params, geometry)
    if method.validate is not None:
        method.validate(float(scale), full, geometry)
    rope_parameters = method.build(float(scale), full, geometry)
    rope_parameters.setdefault("rope_theta", geometry.base)
    return rope_parameters


def _head_dim(config) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def geometry_of(config) -> RopeGeometry:
    """RoPE geometry of a transformers config; the original context survives extension."""
    meta = getattr(config, "longctx_rope", None) or {}
    base = meta.get("base") or config.rope_parameters["rope_theta"]
    original = meta.get("original_context") or config.max_position_embeddings
    return RopeGeometry(_head_dim(config), float(base), int(original), int(config.max_position_embeddings),
                        getattr(config, "model_type", None))


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
    extended twice is described relative to its pretrained RoPE. ``max_position_embeddings`` is
    left as it is (transformers' ``dynamic`` type reads L from it).
    """
    config = model.config
    geometry = geometry_of(config)
    full = resolve_for(method, params, geometry)  # recorded as resolved (YaRN's betas of this family)
    rope_parameters = build_rope_parameters(method, scale, full, geometry)
    modules = _rotary_modules(model)
    if not modules:
        raise RopeMethodError(f"{type(model).__name__} has no rotary embedding module to rescale")
    config.rope_parameters = rope_parameters
    config.longctx_rope = {
        "method": method,
        "scale": float(scale),
        "params": full,
        "base": geometry.base,
        "original_context": geometry.original_context,
    }
    for name, module in modules:
        device = module.inv_freq.device
        new = type(module)(config=config).to(device)
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        setattr(parent, name.rsplit(".", 1)[-1], new)
    return model


# --- what the other stages ask of a model's RoPE ------------------------------------------------


def cache_is_stale(config, cached_len: int, new_len: int) -> bool:
    """Whether keys cached for a ``cached_len``-token sequence are rotated wrongly at ``new_len``.

    Holds at a LongRoPE short/long switch and, for dynamic NTK / dynamic YaRN, at every length
    beyond L (their scale s = max(1, len/L) changes the rotation of every position).
    """
    params = config.rope_parameters
    rope_type = params.get("rope_type")
    if rope_type == "longrope":
        L = int(params["original_max_position_embeddings"])
        return cached_len <= L < new_len or new_len <= L < cached_len
    if rope_type == "dynamic":
        L = int(config.max_position_embeddings)
        return new_len != cached_len and max(cached_len, new_len) > L
    if rope_type in CUSTOM_TYPES:
        return bool(CUSTOM_TYPES[rope_type].cache_stale(params, cached_len, new_len))
    return False


def switch_lengths(config) -> list[int]:
    """Fixed sequence lengths at which the model's RoPE changes the rotation of earlier positions
    (LongRoPE factor-set limits). The dynamic methods change it at *every* length beyond L; ask
    ``cache_is_stale`` or ``length_dependent_beyond`` for those."""
    params = config.rope_parameters
    rope_type = params.get("rope_type")
    if rope_type == "longrope":
        return [int(params["original_max_position_embeddings"])]
    if rope_type in CUSTOM_TYPES:
        return sorted(int(x) for x in CUSTOM_TYPES[rope_type].switch_lengths(params))
    return []


def length_dependent_beyond(config) -> int | None:
    """L for the dynamic methods (every length above it rotates all positions differently), else None.

    Rows of different lengths above L cannot share a batch exactly: the rotary module picks the
    scale from the longest row."""
    params = config.rope_parameters
    rope_type = params.get("rope_type")
    if rope_type == "dynamic":
        return int(config.max_position_embeddings)
    if rope_type in CUSTOM_TYPES and CUSTOM_TYPES[rope_type].cache_stale(params, 10**12, 10**12 + 1):
        return int(params["original_max_position_embeddings"])
    return None


def training_inputs(config, batch_size: int, seq_len: int, generator: torch.Generator | None = None,
                    device=None) -> dict:
    """Extra forward kwargs for one training batch of the model's RoPE method ({} for most).

    For Giraffe's randomized positions: fresh ``position_ids`` [B, T] (float) and an all-ones
    ``attention_mask``. The mask matters: without one, transformers reads positions that do not
    step by 1 as several packed sequences and masks attention between them.
    """
    method = get_method(rope_spec_of(config)["method"])
    if method.training_positions is None:
        return {}
    positions = method.training_positions(batch_size, seq_len, generator, device)
    mask = torch.ones(batch_size, seq_len, dtype=torch.long, device=positions.device)
    return {"position_ids": positions, "attention_mask": mask}


# --- tables for tests, search seeds and plots -----------------------------------------------------


def _rotary_for(rope_parameters: dict, head_dim: int, max_position_embeddings: int | None = None):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    if max_position_embeddings is None:
        max_position_embeddings = rope_parameters.get("original_max_position_embeddings", 2048)
    config = LlamaConfig(
        hidden_size=head_dim,
        num_attention_heads=1,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        rope_parameters=copy.deepcopy(rope_parameters),
    )
    return LlamaRotaryEmbedding(config)


def cos_sin(rope_parameters: dict, head_dim: int, position_ids: torch.Tensor, max_position_embeddings=None):
    """cos and sin tables [B, T, head_dim] exactly as a model's attention sees them (float32).

    ``max_position_embeddings``: the L of transformers' ``dynamic`` type (default: the
    parameters' ``original_max_position_embeddings``, else 2048).
    """
    rotary = _rotary_for(rope_parameters, head_dim, max_position_embeddings)
    return rotary(torch.zeros(1, dtype=torch.float32), position_ids)


def inverse_frequencies(rope_parameters: dict, head_dim: int, seq_len: int | None = None,
                        max_position_embeddings=None) -> torch.Tensor:
    """Per-pair frequencies in use at sequence length ``seq_len`` (for tests, search seeds, plots).

    Start tokens kept at original RoPE (LongRoPE's n_hat) are not reflected: this is the
    frequency of the positions after them.
    """
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope_type = rope_parameters["rope_type"]
    if rope_type in CUSTOM_TYPES:
        return CUSTOM_TYPES[rope_type].inv_freq(rope_parameters, head_dim, seq_len)[0].double()
    rotary = _rotary_for(rope_parameters, head_dim, max_position_embeddings)
    if rope_type == "default":
        return rotary.inv_freq.double()
    inv_freq, _ = ROPE_INIT_FUNCTIONS[rope_type](rotary.config, None, seq_len=seq_len)
    return inv_freq.double()

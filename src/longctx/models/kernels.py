"""Kernels a stage can pick: compiled decoder layers, and the SDPA attention kernels."""

from __future__ import annotations

import contextlib

SDPA_KERNELS = ("cudnn", "flash", "efficient", "math")


class AttentionError(ValueError):
    """An attention kernel cannot be used as configured; the message names the config key."""


def compile_layers(model) -> int:
    """``torch.compile`` each decoder layer in place; returns how many.

    Per layer rather than the whole model: one compiled graph serves every layer, compiling takes
    seconds, and what fusing buys (norms, RoPE, SwiGLU, residuals in a few kernels; 1.26x in
    training at 32k tokens on an H100, docs/training.md) is inside the layers. Attention stays the
    SDPA kernel PyTorch picks."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    for layer in layers:
        layer.compile()
    return len(layers)


def sdpa_kernels(kernels, key: str) -> contextlib.AbstractContextManager:
    """SDPA restricted to ``kernels`` (names of ``SDPA_KERNELS``, in priority order; one name alone,
    or None / ``auto`` / empty for PyTorch's own choice). ``key`` is the config key, for errors."""
    if kernels in (None, "auto") or not kernels:
        return contextlib.nullcontext()
    kernels = [kernels] if isinstance(kernels, str) else list(kernels)
    unknown = [k for k in kernels if k not in SDPA_KERNELS]
    if unknown:
        raise AttentionError(f"config key '{key}': unknown SDPA kernels {unknown}; known: auto, {', '.join(SDPA_KERNELS)}")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    return sdpa_kernel([names[k] for k in kernels], set_priority=True)

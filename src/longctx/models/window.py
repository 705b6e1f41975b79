"""Sliding-window attention widened to the length a job runs at (``model.sliding_window``).

Mistral-7B-v0.1 ships ``sliding_window: 4096``: left alone, every stage of an extension attends to
4096 tokens only, whatever the RoPE does beyond them. YaRN sets the window to the context length
(Peng et al. 2023, App. B.4); LongRoPE's Mistral scripts pass ``--attn-sliding-window 131072``
(microsoft/LongRoPE).
"""

from __future__ import annotations

WINDOW_CHOICES = ("widen", "keep")


class WindowError(ValueError):
    """``model.sliding_window`` is not widen, keep or a positive integer."""


def widen_sliding_window(model, length: int, setting) -> int | None:
    """Set the model's sliding attention window for a job at ``length`` tokens; returns the window
    now in force (None: the model has none).

    ``setting``: ``widen`` (at least ``length``; a wider window is left as it is), ``keep`` (as
    shipped) or an integer (that window). Both the config - which the masks read at every forward and
    ``save_pretrained`` records - and the attention modules that copied it at init (Qwen2's sliding
    layers) are set. A model without a sliding window (Llama; Qwen2 with ``use_sliding_window``
    off) is left alone.
    """
    if setting not in WINDOW_CHOICES and not (isinstance(setting, int) and not isinstance(setting, bool)
                                              and setting >= 1):
        raise WindowError(f"config key 'model.sliding_window' must be widen, keep or a positive integer, "
                          f"got {setting!r}")
    config = model.config
    current = getattr(config, "sliding_window", None)
    if current is None or setting == "keep":
        return current
    window = max(int(current), int(length)) if setting == "widen" else int(setting)
    config.sliding_window = window
    for module in model.modules():
        # modules that cached the window at init (a full-attention layer keeps None)
        if module is not model and isinstance(getattr(module, "sliding_window", None), int):
            module.sliding_window = window
        inner = getattr(module, "config", None)
        if inner is not None and inner is not config and getattr(inner, "sliding_window", None) is not None:
            inner.sliding_window = window
    return window

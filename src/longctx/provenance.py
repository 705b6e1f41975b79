"""Fingerprints of what made a resumable state, so that it is resumed only from the same inputs.

A fine-tune checkpoint and a LongRoPE search log each record a fingerprint: a dict with one digest
per input that determines them (starting weights and their RoPE, data, settings, seed, ...). A
rerun resumes only when every digest matches. Otherwise the old state is set aside beside itself
(renamed, never deleted), the log says which input changed, and the job starts fresh.

Digests are of content, never of paths or times: the same weights in another folder match, a base
model rebuilt with other settings does not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

_CHUNK = 1 << 24


def digest(obj) -> str:
    """sha256 of ``obj`` as canonical JSON (sorted keys; tuples as lists)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()


def _plain(x):
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot fingerprint a {type(x).__name__}")


def tensors_digest(named_tensors: Iterable) -> str:
    """sha256 over (name, dtype, shape, bytes) of each tensor, in name order."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(named_tensors, key=lambda item: item[0]):
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        flat = t.reshape(-1).contiguous()
        for a in range(0, flat.numel(), _CHUNK):  # a chunk at a time: a GPU tensor is copied in pieces
            h.update(flat[a : a + _CHUNK].cpu().view(torch.uint8).numpy())
    return h.hexdigest()


# config entries that say where or how a model was saved, not what it computes
_NOT_MODEL = ("_name_or_path", "architectures", "transformers_version", "dtype", "torch_dtype")


def model_digest(model) -> str:
    """The weights (state dict) and the architecture and RoPE (config) of a transformers model."""
    config = {k: v for k, v in model.config.to_dict().items() if k not in _NOT_MODEL and not k.startswith("_")}
    return digest({"weights": tensors_digest(model.state_dict().items()), "config": config})


def files_digest(paths: Iterable) -> str:
    """sha256 over the content of files (name and bytes), in the order given."""
    h = hashlib.sha256()
    for path in paths:
        path = Path(path)
        h.update(f"{path.name}|{path.stat().st_size}|".encode())
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def token_file_digest(prefix) -> str:
    """The content of a prepared split (its .bin, .idx.npy and .json, longctx.data)."""
    prefix = Path(prefix)
    return files_digest(prefix.with_suffix(s) for s in (".bin", ".idx.npy", ".json"))


def changed(recorded: dict | None, current: dict) -> list[str]:
    """The inputs whose digests differ (all of them when nothing was recorded)."""
    if not isinstance(recorded, dict):
        return sorted(current)
    return sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))


def set_aside(path, why: str) -> Path:
    """Rename a stale state ``path`` to ``<name>.set-aside-<time>`` beside it (never delete); log why."""
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.set-aside-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.set-aside-{stamp}-{n}")
    path.rename(target)
    log.warning("%s: %s; set aside as %s, starting fresh", path, why, target.name)
    return target

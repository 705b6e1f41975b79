"""Training checkpoints that load without running code: tensors in safetensors, the rest in JSON.

A checkpoint folder (``results/<experiment>/work/<variant>/checkpoint``) holds

- ``progress.json``: step, data position, settings and the fingerprint of the run's inputs
  (``longctx.provenance``), which decides whether a rerun may resume from it;
- ``state.safetensors`` + ``state.json``: model, optimizer and scheduler state (the whole,
  unsharded state, written by the main process);
- ``rng-<rank>.safetensors`` + ``rng-<rank>.json``: each process's random generators.

Nothing is read with pickle: a planted ``*.pkl`` or ``*.bin`` in the folder is never opened (a
shared cluster file system must not be a way to run code in someone's job). Model and optimizer
state go through ``torch.distributed.checkpoint.state_dict``, which gathers FSDP2 shards into
whole tensors and scatters them back on load. DeepSpeed keeps its optimizer state in objects only
pickle can store, so DeepSpeed runs are not resumed (``resumable``).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch

from longctx.artifacts import ArtifactError, atomic_path, read_json, write_json

FORMAT = "longctx-checkpoint-2"


class StateError(ValueError):
    """A state cannot be stored without pickle; the message names where in the state it is."""


# --- nested state <-> (tensors, JSON) --------------------------------------------------------------


def _encode(obj, where: str, tensors: dict, seen: dict):
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        key = (t.data_ptr(), t.dtype, tuple(t.shape), t.stride()) if t.numel() else None
        if key is not None and key in seen:  # tied weights: one copy, two references
            return {"$tensor": seen[key]}
        name = f"t{len(tensors)}"
        tensors[name] = t.cpu().contiguous()
        if key is not None:
            seen[key] = name
        return {"$tensor": name}
    if isinstance(obj, np.ndarray):
        return {"$ndarray": obj.tolist(), "dtype": obj.dtype.str}
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"$float": repr(obj)}
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(x, f"{where}[{i}]", tensors, seen) for i, x in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(x, f"{where}[{i}]", tensors, seen) for i, x in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: _encode(v, f"{where}.{k}", tensors, seen) for k, v in obj.items()}
        return {"$items": [[_encode(k, where, tensors, seen), _encode(v, f"{where}.{k}", tensors, seen)]
                           for k, v in obj.items()]}
    raise StateError(f"{where}: a {type(obj).__name__} cannot be stored without pickle")


def _decode(obj, tensors: dict):
    if isinstance(obj, list):
        return [_decode(x, tensors) for x in obj]
    if not isinstance(obj, dict):
        return obj
    if "$tensor" in obj:
        return tensors[obj["$tensor"]]
    if "$ndarray" in obj:
        return np.asarray(obj["$ndarray"], dtype=np.dtype(obj["dtype"]))
    if "$float" in obj:
        return float(obj["$float"])
    if "$tuple" in obj:
        return tuple(_decode(x, tensors) for x in obj["$tuple"])
    if "$items" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["$items"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def save_tree(stem, tree, what: str = "state") -> None:
    """Write a nested state (dicts, lists, tuples, numbers, strings, tensors, arrays) as
    ``<stem>.safetensors`` + ``<stem>.json``."""
    from safetensors.torch import save_file

    stem = Path(stem)
    tensors: dict = {}
    structure = _encode(tree, what, tensors, {})
    with atomic_path(stem.with_suffix(".safetensors")) as tmp:
        save_file(tensors, str(tmp))
    write_json(stem.with_suffix(".json"), structure)


def load_tree(stem, device="cpu"):
    """Read back what ``save_tree`` wrote (safetensors and JSON only)."""
    from safetensors.torch import load_file

    stem = Path(stem)
    try:
        tensors = load_file(str(stem.with_suffix(".safetensors")), device=str(device))
    except Exception as e:  # safetensors raises its own error types for a cut or corrupt file
        raise ArtifactError(f"{stem.with_suffix('.safetensors')} is corrupt ({e}); delete the folder "
                            f"{stem.parent} to start over") from None
    return _decode(read_json(stem.with_suffix(".json")), tensors)


# --- a training run's state --------------------------------------------------------------------------


def resumable(strategy: str) -> bool:
    """DeepSpeed's optimizer state holds Python objects (loss scaler, partition maps) only pickle stores."""
    return not strategy.startswith("deepspeed")


def _options(distributed: bool, loading: bool = False):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # several processes: whole tensors gathered on (and broadcast from) the main process
    return StateDictOptions(full_state_dict=distributed, cpu_offload=distributed,
                            broadcast_from_rank0=distributed and loading)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(folder, model, optimizer, scheduler, *, rank: int, distributed: bool) -> None:
    """Every process calls this (gathering shards is collective); the main one writes the state."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    folder = Path(folder)
    model_state, optim_state = get_state_dict(model, optimizer, options=_options(distributed))
    if rank == 0:
        save_tree(folder / "state", {"model": model_state, "optimizer": optim_state,
                                     "scheduler": scheduler.state_dict()})
    save_tree(folder / f"rng-{rank}", rng_state(), "rng")


def load_training_state(folder, model, optimizer, scheduler, *, rank: int, distributed: bool) -> None:
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    folder = Path(folder)
    state = load_tree(folder / "state") if rank == 0 or not distributed else None
    if state is None:  # the others receive the main process's tensors
        scheduler_state = read_json(folder / "state.json")["scheduler"]
        state = {"model": {}, "optimizer": {}, "scheduler": _decode(scheduler_state, {})}
    # separately: set_state_dict would take the other processes' empty model dict for "optimizer only"
    options = _options(distributed, loading=True)
    set_model_state_dict(model, state["model"], options=options)
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=options)
    scheduler.load_state_dict(state["scheduler"])
    rng = folder / f"rng-{rank}"
    if rng.with_suffix(".json").exists():
        set_rng_state(load_tree(rng))


def write_progress(folder, **progress) -> None:
    write_json(Path(folder) / "progress.json", {"format": FORMAT, **progress})


def read_progress(folder) -> dict | None:
    path = Path(folder) / "progress.json"
    return read_json(path) if path.exists() else None


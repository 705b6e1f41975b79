"""Artifacts on disk: atomic writes, so a killed job never leaves a half-written output; JSON that
never holds a non-finite number; a corrupt artifact named by its path, with what to delete."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; on success move it into place in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are for everyone who reads results/
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


class ArtifactError(ValueError):
    """An artifact on disk cannot be read (cut short, corrupt); the message names it and what to delete."""


def write_json(path: str | Path, obj) -> None:
    """Write ``obj`` as JSON, atomically; a NaN or infinity anywhere in it is an error, not a result."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=False, default=_jsonable, allow_nan=False)
    except ValueError as e:
        raise ValueError(f"not writing {path}: it would hold a non-finite number ({e})") from None
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def read_json(path: str | Path):
    """Read a JSON artifact; a corrupt one is an ``ArtifactError`` naming the file to delete."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is corrupt (not valid JSON: {e}); delete it and rerun, which "
                            f"rebuilds it") from None


def _jsonable(x):
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")

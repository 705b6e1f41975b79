"""Reading offline W&B runs back (``results/<experiment>/wandb/offline-run-*``): what each run logged.

wandb writes each offline run as a LevelDB-style log of protobuf records (run-<id>.wandb) and ships
no Python reader for it; the record schema is wandb's own (wandb.proto).

The earlier runs of a job that ran again (``supersede_offline``) live in ``wandb/superseded/``:
``offline_runs`` reads the latest ones unless asked for those too, and ``latest_runs`` keeps one
run per job of any list.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SUPERSEDED_DIR = "superseded"
_BLOCK, _HEADER = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:_HEADER])
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path}: not a W&B run file")
    i, chunks = _HEADER, []
    while i + _HEADER <= len(data):
        if _BLOCK - i % _BLOCK < _HEADER:  # a block's tail too short for a header is padding
            i += _BLOCK - i % _BLOCK
            continue
        crc, n, kind = struct.unpack("<IHB", data[i:i + _HEADER])
        chunk = data[i + _HEADER:i + _HEADER + n]
        i += _HEADER + n
        if kind == 0 and n == 0:
            continue
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise ValueError(f"{path}: corrupt record at byte {i - n - _HEADER}")
        chunks = [chunk] if kind in (_FULL, _FIRST) else chunks + [chunk]
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(b"".join(chunks))
            yield record


def _item_key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


@dataclass
class OfflineRun:
    """What one offline run logged: its identity, config, per-step history and summary."""

    path: Path
    id: str = ""
    project: str = ""
    group: str = ""
    job_type: str = ""
    name: str = ""
    tags: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    superseded: bool = False  # a later run of the same job exists (the folder is in wandb/superseded/)

    def table(self, key: str) -> list[dict]:
        """The rows of the last W&B Table logged under ``key``, as dicts."""
        for row in reversed(self.history):
            value = row.get(key)
            if isinstance(value, dict) and value.get("_type") == "table-file":
                table = json.loads((self.path / "files" / value["path"]).read_text())
                return [dict(zip(table["columns"], r)) for r in table["data"]]
        raise KeyError(f"{self.path}: no table logged under {key!r}")

    def media(self, key: str) -> Path:
        """The file of the last image logged under ``key``."""
        for row in reversed(self.history):
            value = row.get(key)
            if isinstance(value, dict) and "path" in value:
                return self.path / "files" / value["path"]
        raise KeyError(f"{self.path}: no media logged under {key!r}")


def read_offline_run(run_dir) -> OfflineRun:
    """Read an offline run folder (``offline-run-*``) back from its ``.wandb`` file."""
    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no run-*.wandb file")
    out = OfflineRun(path=run_dir)
    for record in _records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            out.id, out.project, out.group, out.job_type = r.run_id, r.project, r.run_group, r.job_type
            out.name, out.tags = r.display_name, list(r.tags)
            for u in r.config.update:
                _set_nested(out.config, list(u.nested_key) or [u.key], json.loads(u.value_json))
        elif kind == "config":
            for u in record.config.update:
                _set_nested(out.config, list(u.nested_key) or [u.key], json.loads(u.value_json))
        elif kind == "history":
            row = {}
            for item in record.history.item:
                _set_nested(row, list(item.nested_key) or [item.key], json.loads(item.value_json))
            out.history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                out.summary[_item_key(item)] = json.loads(item.value_json)
    out.config.pop("_wandb", None)
    out.superseded = run_dir.parent.name == SUPERSEDED_DIR
    return out


def run_identity(run_dir) -> tuple[str, str, str] | None:
    """(project, group, name) of an offline run from its first records; None when the folder has no
    readable run record (yet)."""
    try:
        files = sorted(Path(run_dir).glob("run-*.wandb"))
        for record in _records(files[0]) if files else ():
            if record.WhichOneof("record_type") == "run":
                return record.run.project, record.run.run_group, record.run.display_name
    except (OSError, ValueError):
        return None  # a run being written or moved by another job
    return None


def supersede_offline(wandb_dir, project: str, group: str, name: str) -> list[Path]:
    """Move the offline runs of (project, group, name) from ``wandb_dir`` to ``wandb_dir/superseded``:
    called as a job's new run starts, so what stays in ``wandb_dir`` is the latest run of each job."""
    wandb_dir = Path(wandb_dir)
    moved = []
    for run_dir in sorted(wandb_dir.glob("offline-run-*")):
        if run_dir.is_dir() and run_identity(run_dir) == (project, group, name):
            target = wandb_dir / SUPERSEDED_DIR / run_dir.name
            target.parent.mkdir(exist_ok=True)
            shutil.move(str(run_dir), str(target))
            moved.append(target)
    if moved:
        log.info("W&B: %d earlier run(s) of %s moved to %s", len(moved), name, wandb_dir / SUPERSEDED_DIR)
    return moved


def _set_nested(row: dict, keys: list[str], value) -> None:
    # W&B splits a logged dict value (a table's reference) into one item per leaf: rebuild it
    head, *rest = keys
    if not rest:
        row[head] = value
    else:
        _set_nested(row.setdefault(head, {}), rest, value)


def offline_runs(wandb_dir, superseded: bool = False) -> list[OfflineRun]:
    """The offline runs under a folder (e.g. results/<experiment>/wandb), oldest first: the latest
    run of each job, and with ``superseded`` the earlier ones too (marked ``.superseded``)."""
    folders = [*Path(wandb_dir).glob("offline-run-*")]
    if superseded:
        folders += Path(wandb_dir, SUPERSEDED_DIR).glob("offline-run-*")
    # folder names start with the run's start time: offline-run-YYYYMMDD_HHMMSS-<id>
    return [read_offline_run(p) for p in sorted(folders, key=lambda p: p.name) if p.is_dir()]


def latest_runs(runs: list[OfflineRun]) -> list[OfflineRun]:
    """One run per job (project, group, name): the last started that is not superseded."""
    last = {}
    for r in runs:
        if not r.superseded:
            last[(r.project, r.group, r.name)] = r
    return [r for r in runs if last.get((r.project, r.group, r.name)) is r]

"""The work directory of `prepare`: `.OUT.prepare-work/`, beside `--out`, until `--out` is complete.

It carries the fingerprint of the inputs and settings (`plan.json`). Every task and phase result is a
directory written under a temporary name and renamed into place with its `meta.json` (which carries
the fingerprint too), so after a kill or a full disk the same command finds what is finished and
redoes only the rest.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np

from kobert_pretrain.errors import UserError
from kobert_pretrain.fsutil import atomic_write_json

FORMAT = 1  # version of the work files; part of the fingerprint
PLAN_FILE = "plan.json"
META_FILE = "meta.json"


def work_dir_of(out: Path) -> Path:
    return out.with_name(f".{out.name}.prepare-work")


def fingerprint(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def claim(work: Path, fp: str, identity: dict) -> None:
    """Start or resume the work directory; refuse one left by a run of other inputs or settings."""
    plan = work / PLAN_FILE
    if plan.is_file():
        try:
            planned = json.loads(plan.read_text(encoding="utf-8"))
        except ValueError:
            planned = {}
        if planned.get("fingerprint") == fp:
            return
        raise UserError(f"{work} holds an interrupted prepare of other inputs or settings: re-run it with its "
                        f"original arguments to finish it, or remove {work}")
    if work.exists() and not work.is_dir():
        raise UserError(f"{work} is in the way (a file where prepare keeps its work): remove it")
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan, {"fingerprint": fp, "identity": identity})


def task_dir(work: Path, phase: str, t: int) -> Path:
    """Task t's result of a per-task phase (clean, filter)."""
    return work / phase / f"task-{t:06d}"


def boilerplate_file(work: Path) -> Path:
    """Phase 2's result: the sorted hashes of the boilerplate lines."""
    return work / "boilerplate.npy"


def dedup_dir(work: Path) -> Path:
    """Phase 4's result: per task, document status and sentence keep flags."""
    return work / "dedup"


def read_meta(path: Path) -> dict:
    return json.loads((path / META_FILE).read_text(encoding="utf-8"))


def finished(path: Path, fp: str) -> dict | None:
    """A result directory's meta.json if it is complete and from this fingerprint."""
    try:
        meta = read_meta(path)
    except (OSError, ValueError):
        return None
    return meta if meta.get("fingerprint") == fp else None


def begin(final: Path) -> Path:
    """An empty temporary directory beside `final`, private to this process, to be `publish`ed."""
    tmp = final.with_name(final.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish(tmp: Path, final: Path, meta: dict) -> None:
    """Files synced, meta.json last, then rename: a result directory exists under its name only when complete."""
    for child in tmp.iterdir():
        with open(child, "rb") as f:
            os.fsync(f.fileno())
    atomic_write_json(tmp / META_FILE, meta)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()

"""Atomic writes and content hashing: nothing half-written may ever be visible."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; rename it to `final` only if the block succeeds.

    The temp dir lives next to `final` so the rename is atomic on one file system. If `final`
    appeared meanwhile (a concurrent run produced the same content-addressed version), the new copy
    is discarded: both are identical by construction.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        commit_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def commit_dir(tmp: Path, final: Path) -> None:
    """Rename a fully written directory into place; if a concurrent writer of the same
    content-addressed directory won the race, keep theirs and drop ours."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not Path(final).is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomic(path: Path, obj: Any, sort_keys: bool = False) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=sort_keys, default=str)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_npy_atomic(path: Path, array) -> None:
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def file_digest(path: Path, algo: str = "blake2b") -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, algo).hexdigest()


def stable_hash(obj: Any, n: int = 16) -> str:
    """Hash of a JSON-serialisable object, independent of dict order."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.blake2b(blob, digest_size=16).hexdigest()[:n]



@contextlib.contextmanager
def waiting_lock(path: Path, log, waiting: str, timeout_s: float = -1):
    """Hold an inter-process file lock; if another process holds it, log `waiting` and wait
    (forever with timeout_s < 0). Raises filelock.Timeout when the wait runs out."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(waiting)
        lock.acquire(timeout=timeout_s)
    try:
        yield
    finally:
        lock.release()


def sweep(parent: Path, pattern: str) -> list[str]:
    """Remove leftovers of writers that died (staging/temp directories matching `pattern`).

    Call only while holding the lock that every writer of those names holds: then nothing that
    matches can belong to a live writer."""
    removed = []
    for p in Path(parent).glob(pattern):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        removed.append(p.name)
    return removed


@contextlib.contextmanager
def sole_writer(final: Path, leftovers: str, log, what: str):
    """Be the only writer of the content-addressed directory `final` (a lock next to it; another
    writer waits with a message). If `final` does not exist yet, whatever matches `leftovers` next to
    it was left by a writer that died (none can be alive while we hold the lock) and is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with waiting_lock(final.parent / f".{final.name}.lock", log, f"another run is writing {what} {final}; waiting"):
        if not final.is_dir():
            for name in sweep(final.parent, leftovers):
                log(f"removed {name}: left by a run that died while writing {what}")
        yield


def flatten(cfg, prefix: str = "") -> dict[str, Any]:
    """A pydantic model or nested dict -> {dotted key: value} (MLflow params, summaries, diffs)."""
    tree = cfg.model_dump(by_alias=True) if hasattr(cfg, "model_dump") else cfg
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out

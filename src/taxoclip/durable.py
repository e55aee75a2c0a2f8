"""Durable writes: a file is either absent or complete, also after a crash, SIGKILL or a full disk.

Builds, checkpoints and caches all promise that re-running a killed command continues
where it stopped; they rely on these functions for it. A full disk (ENOSPC, or a quota:
EDQUOT) during an atomic write leaves the previous file as it was and raises `DiskFull`
naming the path, which callers may re-raise with what else their run kept.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import DiskFull

__all__ = ["fsync_dir", "atomic_file", "write_atomic", "is_disk_full", "DiskFull"]


def is_disk_full(e: BaseException | None) -> bool:
    """ENOSPC or EDQUOT, also when a library reports it in its own words (sqlite) or raises its own
    error while handling it (torch.save: "unexpected pos", with the OSError as its context)."""
    import sqlite3

    for _ in range(8):  # the exception, then what it was raised from or while handling
        if e is None:
            return False
        if isinstance(e, DiskFull) or (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)):
            return True
        if isinstance(e, (OSError, RuntimeError, sqlite3.Error)) and any(
                words in str(e) for words in ("No space left on device", "Disk quota exceeded", "disk is full")):
            return True
        e = e.__cause__ or e.__context__
    return False


def fsync_dir(path: str | Path) -> None:
    """Make a rename or new file in `path` survive a power loss (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces `path` only if the block exits cleanly."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        if is_disk_full(e):
            raise _kept_as_before(path) from None
        raise
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if is_disk_full(e) and not isinstance(e, DiskFull):
            raise _kept_as_before(path) from None
        raise
    fsync_dir(path.parent)


def _kept_as_before(path: Path) -> DiskFull:
    kept = f"{path} as it was before this write" if path.exists() else f"nothing half-written ({path} not created)"
    return DiskFull(path, kept)


def write_atomic(path: str | Path, data: bytes) -> None:
    with atomic_file(path) as fh:
        fh.write(data)

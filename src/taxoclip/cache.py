"""Where taxoclip keeps derived files (converted vocabularies, text banks), and how it writes them.

`TAXOCLIP_CACHE` overrides the location (default `$XDG_CACHE_HOME/taxoclip`, i.e.
`~/.cache/taxoclip`). Entries are written into a temporary directory and renamed into place,
so a killed process never leaves a half-written entry that a later run would trust.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["cache_root", "cache_entry", "hash_key", "file_sha256"]


def cache_root() -> Path:
    env = os.environ.get("TAXOCLIP_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "taxoclip"


def hash_key(*parts: object) -> str:
    """A short hex key from any JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def file_sha256(path: str | os.PathLike) -> str:
    """A file's content hash, read in 1 MB blocks (for provenance records and shipped-file checks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def cache_entry(kind: str, key: str) -> Iterator[tuple[Path, Path | None]]:
    """Yield (final_dir, tmp_dir). tmp_dir is None when the entry exists already.

    Fill tmp_dir; on a clean exit it is renamed to final_dir atomically. On error it is removed.
    """
    final = cache_root() / kind / key
    if (final / "DONE").exists():
        yield final, None
        return
    tmp = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
        yield final, tmp
        (tmp / "DONE").write_text("")
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first; keep theirs
            if not (final / "DONE").exists():
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
    except Exception as e:
        from .durable import DiskFull, is_disk_full

        if not is_disk_full(e) or (isinstance(e, DiskFull) and not e.path.startswith(str(final.parent))):
            raise
        raise DiskFull(final, "the cache as it was (entries are only ever whole)",
                       "free some space, or set TAXOCLIP_CACHE to a disk with room, and re-run the same command") from None
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

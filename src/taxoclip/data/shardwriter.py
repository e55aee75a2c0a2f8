"""Webdataset shards written so that a killed build can continue them byte for byte.

`webdataset.TarWriter` streams through `tarfile` in "w|" mode, which cannot reopen a half
written file. A tar archive is only 512-byte headers and padded data, closed by two zero
blocks, so `ShardStream` writes members itself (headers from `tarfile.TarInfo`, USTAR, fixed
mtime/owner/mode, like TarWriter with a fixed mtime) into `shard-%05d.tar.tmp`, and the
builder checkpoints (index, byte length) after an fsync. Resuming truncates the file to the
checkpointed length and appends. A full shard gets its end-of-archive blocks, is fsynced and
renamed to `shard-%05d.tar`, so a `.tar` file is always complete.

Sample members are written in sorted extension order, as TarWriter does.
"""
from __future__ import annotations

import os
import tarfile
from pathlib import Path

from ..durable import fsync_dir

__all__ = ["ShardStream", "SHARD_PATTERN", "MTIME"]

SHARD_PATTERN = "shard-%05d.tar"
MTIME = 946684800  # 2000-01-01: a fixed member time keeps shards byte-identical across runs
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE


def _tarinfo_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = MTIME
    info.mode = 0o444
    info.uname = info.gname = "bigdata"
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


_TEMPLATE = bytearray(_tarinfo_header("", 0))
_TEMPLATE[148:156] = b" " * 8  # checksum field counts as spaces
_TEMPLATE_SUM = sum(_TEMPLATE[:124]) + sum(_TEMPLATE[136:])  # without name and size fields
_TEMPLATE_SUM -= sum(_TEMPLATE[0:100])


def member_header(name: str, size: int) -> bytes:
    """The USTAR header `tarfile` writes for a member (fixed mode, owner, mtime), built directly:
    `TarInfo.tobuf` was a third of the main process's time in a build."""
    raw = name.encode("utf-8")
    if len(raw) > 100 or size >= 8 ** 11:
        return _tarinfo_header(name, size)
    head = bytearray(_TEMPLATE)
    head[0:len(raw)] = raw
    head[124:136] = b"%011o\0" % size
    chksum = _TEMPLATE_SUM + sum(raw) + sum(head[124:136])
    head[148:156] = b"%06o\0 " % chksum
    return bytes(head)


class ShardStream:
    """The shards of one split: `<root>/<name>/shard-%05d.tar`, `shard_size` samples each."""

    def __init__(self, root: Path, name: str, shard_size: int, state: dict | None = None):
        self.root = Path(root)
        self.name = name
        self.folder = self.root / name
        self.shard_size = shard_size
        self.index = 0  # shard being filled
        self.count = 0  # samples in it
        self.length = 0  # bytes of it written so far
        self._file = None
        if state:
            self._restore(state)

    # ----- paths ---------------------------------------------------------------------------
    def shard_name(self, index: int | None = None) -> str:
        """Path of a shard relative to the output root (what the catalog records)."""
        return f"{self.name}/{SHARD_PATTERN % (self.index if index is None else index)}"

    def _final(self, index: int) -> Path:
        return self.root / self.shard_name(index)

    def _tmp(self, index: int) -> Path:
        return self._final(index).with_name(self._final(index).name + ".tmp")

    # ----- state ---------------------------------------------------------------------------
    def state(self) -> dict:
        """Make everything written so far durable and return what a resume needs."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
        return {"index": self.index, "count": self.count, "length": self.length}

    def _restore(self, state: dict) -> None:
        self.index, self.count, self.length = int(state["index"]), int(state["count"]), int(state["length"])
        tmp, final = self._tmp(self.index), self._final(self.index)
        if self.count:
            if not tmp.exists() and final.exists():  # finished after the checkpoint: reopen it
                os.replace(final, tmp)
            if not tmp.exists() or tmp.stat().st_size < self.length:
                raise RuntimeError(f"{tmp}: shard shorter than its checkpoint ({self.length} bytes); "
                                   "the output folder was changed by something else")
            self._file = open(tmp, "r+b")
            self._file.truncate(self.length)
            self._file.seek(self.length)
        else:
            for stale in (tmp, final):
                stale.unlink(missing_ok=True)
        # Shards after the checkpointed one were started later; they are rebuilt.
        for path in self.folder.glob("shard-*.tar*") if self.folder.exists() else ():
            stem = path.name.split(".", 1)[0]
            try:
                number = int(stem.split("-", 1)[1])
            except (IndexError, ValueError):
                continue
            if number > self.index:
                path.unlink()

    # ----- writing -------------------------------------------------------------------------
    def write(self, key: str, members: dict[str, bytes]) -> str:
        """Append one sample (`<key>.<ext>` for each member); return its shard's relative path."""
        if self._file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._file = open(self._tmp(self.index), "wb")
            self.length = 0
        shard = self.shard_name()
        chunks = []
        for ext in sorted(members):
            data = members[ext]
            chunks.append(member_header(f"{key}.{ext}", len(data)))
            chunks.append(data)
            pad = -len(data) % _BLOCK
            if pad:
                chunks.append(b"\0" * pad)
        blob = b"".join(chunks)
        try:
            self._file.write(blob)
        except OSError as e:  # name the shard: a file object's write errors carry no path
            e.filename = e.filename or str(self._tmp(self.index))
            raise
        self.length += len(blob)
        self.count += 1
        if self.count >= self.shard_size:
            self._finish()
        return shard

    def _finish(self) -> None:
        """Close the current shard: end-of-archive blocks, fsync, rename to its final name."""
        if self._file is None:
            return
        end = 2 * _BLOCK
        end += -(self.length + end) % _RECORD
        self._file.write(b"\0" * end)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.replace(self._tmp(self.index), self._final(self.index))
        fsync_dir(self.folder)
        self.index += 1
        self.count = 0
        self.length = 0

    def close(self) -> None:
        """Finish the last, partly filled shard."""
        if self._file is not None and self.count:
            self._finish()
        elif self._file is not None:
            self._file.close()
            self._file = None

    def abandon(self) -> None:
        """Close the file without finishing it (the checkpoint keeps what a resume needs)."""
        if self._file is not None:
            self._file.close()
            self._file = None

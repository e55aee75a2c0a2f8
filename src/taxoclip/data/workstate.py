"""The durable state of a build in progress: `OUT/.work/`, checkpoint parts and atomic writes.

A build appends one *part* per checkpoint: the input cursor, the state of every open shard,
and everything decided since the previous part (catalog rows, hashes of kept images, error,
removal and unresolved rows, cumulative counters). Parts are written to a temporary file,
fsynced and renamed, after the shards they describe were fsynced; so after a SIGKILL the
newest part describes a consistent prefix of the work, and a re-run continues from it.

Layout: `.work/build.json` (the build's identity: inputs and every option that changes the
output), `.work/parts/part-NNNNNN.json`, `.work/exclude/` (the evaluation fingerprints),
`.work/fetch/` (the HTTP journal).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterator

from ..durable import write_atomic
from ..errors import InputError

__all__ = ["WorkDir"]


class WorkDir:
    """`OUT/.work`: identity check, parts, scratch folders."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.root = self.out / ".work"
        self.parts_dir = self.root / "parts"

    @property
    def exists(self) -> bool:
        return self.root.is_dir()

    def begin(self, identity: dict[str, Any]) -> None:
        """Start a new build or check that the one in progress is the same build."""
        marker = self.root / "build.json"
        if marker.exists():
            old = json.loads(marker.read_text())
            if old != identity:
                diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
                raise InputError(f"{self.out} holds an unfinished build with different {', '.join(diff)}; "
                                 "re-run the original command to finish it, or pass --overwrite to start over")
            return
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(marker, json.dumps(identity, sort_keys=True, indent=1).encode())

    def parts(self) -> Iterator[dict]:
        """The checkpoint parts in order; stops at the first gap (a part written out of order)."""
        if not self.parts_dir.is_dir():
            return
        names = sorted(p.name for p in self.parts_dir.glob("part-*.json"))
        for i, name in enumerate(names):
            if name != f"part-{i:06d}.json":
                break
            with open(self.parts_dir / name, "rb") as f:
                yield json.loads(f.read())

    def write_part(self, index: int, part: dict) -> None:
        write_atomic(self.parts_dir / f"part-{index:06d}.json",
                     json.dumps(part, separators=(",", ":"), ensure_ascii=False).encode())

    def sub(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

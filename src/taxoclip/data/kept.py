"""What a build remembers of the images it kept, for duplicate checks: on disk, in flat memory.

Each kept image leaves its MD5 (exact duplicates), its PDQ hash (near duplicates, through a
`HammingIndex`) and its uuid (what a later duplicate is reported to match) in one sqlite file,
`OUT/.work/kept.sqlite`. Why not Python dicts: they cost ~1 KB per kept image, so a build's
memory grew with its input; sqlite keeps a bounded page cache whatever the number of rows.

Rows are keyed by the record's sequence number. The builder commits at each checkpoint,
after the shards are fsynced and before the checkpoint part is written; a resumed build
`rewind`s to the checkpoint's cursor, dropping rows a killed run committed after it. So the
file always describes exactly the images the latest checkpoint kept.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

from .hashing import HammingIndex

__all__ = ["KeptImages"]


class KeptImages:
    """Exact (MD5) and near (PDQ, distance < `near_threshold`; 0: off) lookups among kept images."""

    def __init__(self, path: Path, near_threshold: int):
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a commit survives a power cut, like the part after it
        self.db.execute("CREATE TABLE IF NOT EXISTS kept (seq INTEGER PRIMARY KEY, uuid TEXT NOT NULL, "
                        "md5 BLOB NOT NULL)")
        self.db.execute("CREATE INDEX IF NOT EXISTS kept_md5 ON kept (md5)")
        self.near_index = HammingIndex(near_threshold, self.db) if near_threshold else None
        self.db.execute("BEGIN")

    def rewind(self, cursor: int) -> None:
        """Forget images of records numbered `cursor` or later."""
        self.db.execute("DELETE FROM kept WHERE seq >= ?", (cursor,))
        if self.near_index is not None:
            self.near_index.remove_from(cursor)

    def exact(self, md5: str) -> str | None:
        """uuid of the first kept image with these bytes."""
        row = self.db.execute("SELECT uuid FROM kept WHERE md5 = ? ORDER BY seq LIMIT 1",
                              (bytes.fromhex(md5),)).fetchone()
        return None if row is None else row[0]

    def near(self, pdq: bytes) -> tuple[str, int] | None:
        """(uuid, distance) of the nearest kept image within the threshold (ties: the first kept)."""
        hit = self.near_index.nearest(pdq) if self.near_index is not None else None
        if hit is None:
            return None
        return self.db.execute("SELECT uuid FROM kept WHERE seq = ?", (hit[0],)).fetchone()[0], hit[1]

    def add(self, seq: int, uuid: str, md5: str, pdq: bytes | None) -> None:
        """Remember a kept image; `pdq` None keeps it out of near matching (a flat, low-quality hash)."""
        self.db.execute("INSERT INTO kept VALUES (?, ?, ?)", (seq, uuid, bytes.fromhex(md5)))
        if pdq is not None and self.near_index is not None:
            self.near_index.add(seq, pdq)

    def commit(self) -> None:
        """Make everything added so far durable (called at a checkpoint, before its part is written)."""
        self.db.execute("COMMIT")
        self.db.execute("BEGIN")

    def close(self) -> None:
        self.db.execute("COMMIT")
        self.db.close()

    def abandon(self) -> None:
        """Close after a failed run, keeping only what the last checkpoint committed (a commit now
        could itself fail, e.g. on the full disk that stopped the run, and hide why it stopped)."""
        try:
            self.db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        self.db.close()

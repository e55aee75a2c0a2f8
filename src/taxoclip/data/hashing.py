"""Image fingerprints for deduplication: content hashes, PDQ perceptual hashes, a Hamming index.

- `content_hash`: MD5 of the encoded bytes as received (exact duplicates, as the reference).
- `pdq_hash`: Meta's PDQ (256 bits, via the maintained `pdqhash` package) computed on a
  canonical 64x64 Lanczos rendition of the image. Why the canonical rendition: PDQ's own
  box-filter downsampling aliases on small images (bio-mini's 64-96 px photos), so a 2x
  upscale alone flipped ~28 of 256 bits; from a Lanczos 64x64 it flips 1-6. For large photos
  it changes nothing PDQ did not already throw away (PDQ hashes a 64x64 downsample).
- `HammingIndex`: multi-index hashing (Norouzi et al.) for "any stored hash within distance
  < t": the 256 bits are cut into (at least) t chunks; by pigeonhole two hashes closer than t
  bits agree exactly on at least one chunk, so candidates are exact chunk matches, verified by
  popcount. The chunks are rows of an indexed sqlite table: a lookup is one B-tree search per
  chunk plus the (few) candidates, and a file-backed index keeps memory flat (the Python dicts
  it replaced cost ~1 KB per hash).
"""
from __future__ import annotations

import hashlib
import sqlite3

import numpy as np
from PIL import Image

__all__ = ["content_hash", "pdq_hash", "CANONICAL_SIZE", "HammingIndex", "hamming"]

CANONICAL_SIZE = 64


def content_hash(data: bytes) -> str:
    """Hex MD5 of the bytes (an identity for exact duplicates, not a security measure)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def pdq_hash(img: Image.Image) -> tuple[bytes, int]:
    """(32-byte PDQ hash, PDQ quality 0-100) of an RGB image."""
    import pdqhash

    # PDQ hashes luma (0.299 R + 0.587 G + 0.114 B, the weights of Pillow's "L"): resampling the
    # grey image instead of three channels, and by a box reduction first when the image is more
    # than 3x the canonical size, changes 0-4 bits (mean 0.7) for half the work.
    grey = np.asarray(img.convert("L").resize((CANONICAL_SIZE, CANONICAL_SIZE), Image.Resampling.LANCZOS,
                                              reducing_gap=1.5))
    bits, quality = pdqhash.compute(np.dstack((grey, grey, grey)))
    return np.packbits(bits.astype(np.uint8)).tobytes(), int(quality)


def hamming(a: bytes, b: bytes) -> int:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_count()


class HammingIndex:
    """Stored 256-bit hashes, searched for the nearest one within Hamming distance < `threshold`.

    The hashes and their chunks live in two sqlite tables, in the caller's database (a file,
    so memory does not grow with the number of hashes) or in memory. Items are integers the
    caller chooses (the builder uses record sequence numbers); ties go to the smallest item,
    so results do not depend on storage order.
    """

    def __init__(self, threshold: int = 10, db: sqlite3.Connection | None = None, bits: int = 256):
        if not 1 <= threshold <= 64:
            raise ValueError(f"Hamming threshold must be 1-64, got {threshold}")
        self.threshold = threshold
        # At least `threshold` chunks (pigeonhole), and at least 5 so that a chunk (<= 52 bits) and
        # its number (6 bits) make one 64-bit integer key: integer keys were 1.5x faster than blobs.
        n = max(threshold, -(-bits // 52))
        edges = [round(i * bits / n) for i in range(n + 1)]  # chunk boundaries, as equal as possible
        self._chunks = [(bits - hi, (1 << (hi - lo)) - 1) for lo, hi in zip(edges, edges[1:])]
        self._last: tuple[int, list[int]] = (-1, [])
        self.db = db if db is not None else sqlite3.connect(":memory:", isolation_level=None)
        self.db.execute("CREATE TABLE IF NOT EXISTS hamming_items (item INTEGER PRIMARY KEY, hash BLOB NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS hamming_chunks (key INTEGER NOT NULL, item INTEGER NOT NULL, "
                        "PRIMARY KEY (key, item)) WITHOUT ROWID")
        self._query = ("SELECT i.item, i.hash FROM hamming_chunks c JOIN hamming_items i USING (item) "
                       f"WHERE c.key IN ({', '.join('?' * len(self._chunks))})")

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM hamming_items").fetchone()[0]

    def _keys(self, value: int) -> list[int]:
        """One key per chunk: its bits and its number (remembered for the last hash, which the
        builder looks up and then adds)."""
        if self._last[0] != value:
            self._last = (value, [((value >> shift) & mask) << 6 | i for i, (shift, mask) in enumerate(self._chunks)])
        return self._last[1]

    def add(self, item: int, h: bytes) -> None:
        self.db.execute("INSERT INTO hamming_items VALUES (?, ?)", (item, h))
        self.db.executemany("INSERT OR IGNORE INTO hamming_chunks VALUES (?, ?)",
                            [(key, item) for key in self._keys(int.from_bytes(h, "big"))])

    def nearest(self, h: bytes) -> tuple[int, int] | None:
        """(item, distance) of the closest stored hash with distance < threshold, else None."""
        value = int.from_bytes(h, "big")
        best: tuple[int, int] | None = None  # (distance, item)
        for item, stored in self.db.execute(self._query, self._keys(value)):
            d = (int.from_bytes(stored, "big") ^ value).bit_count()
            if d < self.threshold and (best is None or (d, item) < best):
                best = (d, item)
        return None if best is None else (best[1], best[0])

    def remove_from(self, item: int) -> None:
        """Forget the items numbered `item` or more (a resumed build rewinds to its checkpoint)."""
        self.db.execute("DELETE FROM hamming_items WHERE item >= ?", (item,))
        self.db.execute("DELETE FROM hamming_chunks WHERE item >= ?", (item,))

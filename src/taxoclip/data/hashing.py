"""Image fingerprints for deduplication: content hashes, PDQ perceptual hashes, a Hamming index.

- `content_hash`: MD5 of the encoded bytes as received (exact duplicates, as the reference).
- `pdq_hash`: Meta's PDQ (256 bits, via the maintained `pdqhash` package) computed on a
  canonical 64x64 Lanczos rendition of the image. Why the canonical rendition: PDQ's own
  box-filter downsampling aliases on small images (bio-mini's 64-96 px photos), so a 2x
  upscale alone flipped ~28 of 256 bits; from a Lanczos 64x64 it flips 1-6. For large photos
  it changes nothing PDQ did not already throw away (PDQ hashes a 64x64 downsample).
- `HammingIndex`: multi-index hashing (Norouzi et al.) for "any stored hash within distance
  < t": the 256 bits are cut into t chunks; by pigeonhole two hashes closer than t bits agree
  exactly on at least one chunk, so candidates are exact chunk matches, verified by popcount.
"""
from __future__ import annotations

import hashlib

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

    canon = img.convert("RGB").resize((CANONICAL_SIZE, CANONICAL_SIZE), Image.Resampling.LANCZOS)
    bits, quality = pdqhash.compute(np.ascontiguousarray(np.asarray(canon)))
    return np.packbits(bits.astype(np.uint8)).tobytes(), int(quality)


def hamming(a: bytes, b: bytes) -> int:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_count()


class HammingIndex:
    """Find a stored 256-bit hash within Hamming distance < `threshold` of a query.

    Memory per stored hash: the hash and `threshold` dictionary entries (about 1 KB at the
    default threshold of 10). Items are identified by the integer returned from `add`.
    """

    def __init__(self, threshold: int = 10, bits: int = 256):
        if not 1 <= threshold <= 64:
            raise ValueError(f"Hamming threshold must be 1-64, got {threshold}")
        self.threshold = threshold
        self.bits = bits
        n = min(threshold, bits)
        # Chunk boundaries, as equal as possible.
        edges = [round(i * bits / n) for i in range(n + 1)]
        self._chunks = [(bits - hi, (1 << (hi - lo)) - 1) for lo, hi in zip(edges, edges[1:])]
        self._buckets: dict[int, int | list[int]] = {}
        self._hashes: list[int] = []

    def __len__(self) -> int:
        return len(self._hashes)

    def _keys(self, h: int):
        for i, (shift, mask) in enumerate(self._chunks):
            yield ((h >> shift) & mask) << 6 | i

    def add(self, h: bytes) -> int:
        value = int.from_bytes(h, "big")
        idx = len(self._hashes)
        self._hashes.append(value)
        for key in self._keys(value):
            old = self._buckets.get(key)
            if old is None:
                self._buckets[key] = idx
            elif isinstance(old, list):
                old.append(idx)
            else:
                self._buckets[key] = [old, idx]
        return idx

    def nearest(self, h: bytes) -> tuple[int, int] | None:
        """(item, distance) of the closest stored hash with distance < threshold, else None.

        Ties go to the item added first, so results do not depend on bucket order.
        """
        value = int.from_bytes(h, "big")
        best: tuple[int, int] | None = None
        seen: set[int] = set()
        for key in self._keys(value):
            hit = self._buckets.get(key)
            if hit is None:
                continue
            for idx in (hit if isinstance(hit, list) else (hit,)):
                if idx in seen:
                    continue
                seen.add(idx)
                d = (self._hashes[idx] ^ value).bit_count()
                if d < self.threshold and (best is None or (d, idx) < (best[1], best[0])):
                    best = (idx, d)
        return best

"""Train/val/test splits by a stable hash of the record's `source_id`.

All photos of one occurrence share a `source_id`, so they land in the same split; the hash
(SHA-256 of a salt and the id) does not depend on input order, Python's hash seed, the
machine or the other records, so a record keeps its split when a dataset grows.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..errors import InputError

__all__ = ["SplitRule", "parse_splits", "DEFAULT_SPLITS"]

DEFAULT_SPLITS = "train=0.95,val=0.05"


def parse_splits(text: str) -> dict[str, float]:
    """"train=0.9,val=0.05,test=0.05" -> {"train": 0.9, ...}; fractions must sum to 1."""
    fractions: dict[str, float] = {}
    for part in str(text).split(","):
        if not part.strip():
            continue
        name, eq, value = part.partition("=")
        name = name.strip()
        try:
            frac = float(value)
        except ValueError:
            frac = -1.0
        if not eq or not name or not name.replace("_", "").replace("-", "").isalnum() or frac < 0:
            raise InputError(f"bad --splits entry {part.strip()!r}: expected NAME=FRACTION, e.g. train=0.95,val=0.05")
        if name in fractions:
            raise InputError(f"split {name!r} given twice in --splits")
        fractions[name] = frac
    if not fractions or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise InputError(f"--splits fractions must sum to 1, got {sum(fractions.values()):g} in {text!r}")
    return fractions


@dataclass(frozen=True)
class SplitRule:
    """Assign a split to a source id; `salt` lets a user draw a different partition."""

    fractions: tuple[tuple[str, float], ...] = (("train", 0.95), ("val", 0.05))
    salt: str = "taxoclip"

    @classmethod
    def parse(cls, text: str = DEFAULT_SPLITS, salt: str = "taxoclip") -> "SplitRule":
        return cls(tuple(parse_splits(text).items()), salt)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.fractions)

    def position(self, source_id: str) -> float:
        """A uniform number in [0, 1) determined by the id alone."""
        digest = hashlib.sha256(f"{self.salt}\x00{source_id}".encode("utf-8", "surrogatepass")).digest()
        return int.from_bytes(digest[:8], "big") / 2.0 ** 64

    def assign(self, source_id: str) -> str:
        x = self.position(source_id)
        edge = 0.0
        for name, frac in self.fractions:
            edge += frac
            if x < edge:
                return name
        return self.fractions[-1][0]

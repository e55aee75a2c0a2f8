"""How range data and vocabularies are matched: by the taxon's names, not its whole lineage.

A lineage (kingdom … genus, specific epithet; "" for an unknown rank) becomes a tuple of
keys, one per known rank from the top: lower-cased names, and "genus epithet" at species
rank. Two taxa are the same when their deepest keys are equal; a taxon belongs to a group
when the group's deepest key is among the taxon's keys. Vocabularies and GBIF disagree about
higher ranks often enough (a family moved, a class split) that requiring whole lineages to
agree would leave most taxa without range data, while binomials and genus names are stable.
"""
from __future__ import annotations

import functools
from typing import Sequence

from ..taxonomy import normalize_kingdom

__all__ = ["lineage_keys", "norm"]


def norm(name: str) -> str:
    """A name as a key: single spaces, lower case."""
    return " ".join(str(name).split()).lower()


@functools.lru_cache(maxsize=1 << 18)
def _keys(lineage: tuple[str, ...]) -> tuple[str, ...] | None:
    names = [norm(n) if n else "" for n in lineage[:7]]
    if names and names[0]:
        names[0] = norm(normalize_kingdom(names[0]))
    keys = [n for n in names[:6] if n]
    if len(names) == 7 and names[6]:
        if not names[5]:
            return None  # an epithet without its genus names no taxon
        keys.append(f"{names[5]} {names[6]}")
    return tuple(keys) or None


def lineage_keys(lineage: Sequence[str]) -> tuple[str, ...] | None:
    """The match keys of a lineage, highest rank first; None when it names no taxon."""
    return _keys(tuple("" if n is None or n != n else str(n) for n in lineage))  # n != n: NaN

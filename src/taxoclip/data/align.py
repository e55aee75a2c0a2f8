"""Taxonomy alignment: every record leaves with a GBIF-style 7-rank taxon and a note of how.

Sources disagree on kingdom names (NCBI's Metazoa, EOL's Viridiplantae) and often give only a
scientific name. The `Aligner` normalises kingdoms, keeps empty interior ranks empty (a gap is
information, not an error), fills *empty* ranks from offline backbones consulted in order
(never overwriting what the source gave), and records the outcome in `Record.resolution`:

- `given`: the source's own ranks were enough;
- `given+backbone:<name>`: the source's ranks, with empty ones filled from a backbone;
- `backbone:<name>`: only a name was given; all ranks come from the backbone;
- `partial`: no kingdom could be found and `keep_partial` allowed the record anyway.

A record that cannot be resolved is returned with a reason, so the builder can count it and
write it to `unresolved.csv`; nothing is guessed and nothing disappears silently.

A backbone is any object with a `name` and `lookup(scientific_name) -> Taxon | None`
(`taxoclip.data.ncbi.NcbiBackbone`, or `TableBackbone` for a CSV/Parquet taxa table).
"""
from __future__ import annotations

import inspect
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable, Protocol, runtime_checkable

from ..errors import InputError
from ..taxonomy import Taxon, normalize_kingdom
from .records import Record

__all__ = ["Backbone", "TableBackbone", "Aligner", "BACKBONES", "load_backbone"]


@runtime_checkable
class Backbone(Protocol):
    """An offline name resolver: scientific name -> 7-rank taxon (None when unknown)."""

    name: str

    def lookup(self, scientific_name: str) -> Taxon | None: ...


# Conflicts at these ranks mean the backbone found a different organism (a homonym).
_IDENTITY_RANKS = (0, 5)  # kingdom, genus


class Aligner:
    """Resolve the taxonomy of records (see the module docstring for the rules)."""

    def __init__(self, backbones: Iterable[Backbone] = (), *, keep_partial: bool = False):
        self.backbones = list(backbones)
        self.keep_partial = keep_partial
        self._cache: dict[tuple[int, str, str], Taxon | None] = {}
        self._takes_kingdom = [_accepts_kingdom(b) for b in self.backbones]

    def align(self, record: Record) -> str | None:
        """Set `record.taxon` and `record.resolution`; return None, or why it is unresolved."""
        taxon = record.taxon
        if taxon.kingdom:
            taxon = replace(taxon, kingdom=normalize_kingdom(taxon.kingdom))
        name = " ".join((record.scientific_name or "").split()) or _name_of(taxon)
        resolution = "given"
        why = ""
        if self._needs_backbone(taxon, name) and self.backbones:
            found, via, why = self._resolve(name, taxon)
            if found is not None:
                resolution = f"backbone:{via}" if taxon.empty else f"given+backbone:{via}"
                taxon = _fill(taxon, found)
        record.taxon = taxon
        if taxon.empty:
            record.resolution = "unresolved"
            problem = record.meta.get("taxonomy_error") or record.meta.get("unresolved_reason")
            if problem:
                return str(problem)
            if not name:
                return "no taxonomy and no scientific name"
            return why or f"no ranks given for {name!r} and no backbone to look it up (see --backbone)"
        if not taxon.kingdom:
            if self.keep_partial:
                record.resolution = "partial" if resolution == "given" else resolution
                return None
            record.resolution = "unresolved"
            return why or (f"no kingdom for {name or taxon.taxonomic_name!r}"
                           + ("" if self.backbones else " and no backbone to look it up (see --backbone)")
                           + "; --keep-partial keeps such records")
        record.resolution = resolution
        return None

    def _needs_backbone(self, taxon: Taxon, name: str) -> bool:
        """A lookup is worth it when the kingdom is missing or the name is deeper than the ranks."""
        if not name:
            return False
        if not taxon.kingdom:
            return True
        words = name.split()
        return len(words) >= 2 and not taxon.epithet

    def _resolve(self, name: str, given: Taxon) -> tuple[Taxon | None, str, str]:
        tried = []
        for i, backbone in enumerate(self.backbones):
            key = (i, name, given.kingdom)
            if key not in self._cache:
                if self._takes_kingdom[i] and given.kingdom:
                    self._cache[key] = backbone.lookup(name, kingdom=given.kingdom)
                else:
                    self._cache[key] = backbone.lookup(name)
            found = self._cache[key]
            tried.append(backbone.name)
            if found is None or found.empty:
                continue
            if any(given.ranks[r] and found.ranks[r] and given.ranks[r].lower() != found.ranks[r].lower()
                   for r in _IDENTITY_RANKS):
                continue
            return found, backbone.name, ""
        return None, "", f"{name!r} not found in backbone {', '.join(tried)}"


def _name_of(taxon: Taxon) -> str:
    """The deepest name a taxon carries, for lookups when the source gave no separate name."""
    if taxon.epithet and taxon.genus:
        return taxon.species
    return taxon.scientific_name if not taxon.empty else ""


def _fill(given: Taxon, found: Taxon) -> Taxon:
    """Fill the empty ranks of `given` from `found`; never overwrite a given value."""
    ranks = [g or f for g, f in zip(given.ranks, found.ranks)]
    return Taxon(*ranks, common=given.common or found.common)


def _accepts_kingdom(backbone: Backbone) -> bool:
    try:
        return "kingdom" in inspect.signature(backbone.lookup).parameters
    except (TypeError, ValueError):
        return False


class TableBackbone:
    """A taxa table (CSV, TSV or Parquet) used as a backbone.

    Each row gives ranks (`kingdom` … `genus`, `species`/`specificEpithet`) and optionally a
    `common_name`. Every binomial, and every higher-rank name that is unambiguous in the
    table, resolves to its lineage (truncated at that rank).
    """

    def __init__(self, path: str | Path, name: str | None = None):
        from .tables import read_table_rows

        self.path = Path(path)
        self.name = name or self.path.stem
        names: dict[str, Taxon | None] = {}
        for row in read_table_rows(self.path):
            try:
                taxon = Taxon.from_record(row)
            except ValueError as e:
                raise InputError(f"{self.path}: {e}") from None
            if taxon.empty:
                continue
            for r, value in enumerate(taxon.ranks[:6]):
                if value:
                    _add(names, value.lower(), taxon.truncate(r))
            if taxon.epithet:
                _add(names, taxon.species.lower(), taxon)
        self._names = names

    def lookup(self, scientific_name: str) -> Taxon | None:
        words = scientific_name.split()
        key = " ".join(words[:2]).lower() if len(words) >= 2 else scientific_name.strip().lower()
        return self._names.get(key)


def _add(names: dict[str, Taxon | None], key: str, taxon: Taxon) -> None:
    old = names.get(key, taxon)
    names[key] = taxon if old is None or old.ranks == taxon.ranks else None  # ambiguous -> None
    if old is not None and old.ranks == taxon.ranks and old.common and not taxon.common:
        names[key] = old


def _ncbi() -> Backbone:
    from .ncbi import NcbiBackbone

    return NcbiBackbone()


# Named backbones; anything else given to `load_backbone` is read as a taxa table.
BACKBONES: dict[str, Callable[[], Backbone]] = {"ncbi": _ncbi}


def load_backbone(spec: str) -> Backbone:
    """A backbone by registry name (`ncbi`) or a path to a taxa table."""
    if spec in BACKBONES:
        return BACKBONES[spec]()
    path = Path(spec).expanduser()
    if path.is_file():
        return TableBackbone(path)
    raise InputError(f"unknown backbone {spec!r}: expected one of {', '.join(BACKBONES)} or a taxa table file")


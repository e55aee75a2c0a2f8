"""`RangePrior`: whether each candidate taxon is present, absent or unknown at a place.

Sources (geofences, GBIF presence tables, checklists) combine in a fixed order of strength:

1. an explicit geofence *block* of the taxon, or of a group it belongs to, makes it ABSENT,
   whatever other sources say (a curated "never here", e.g. a European deer in the USA);
2. otherwise PRESENT if any source has it (or, for a group, any member) here: a record or a
   listing is positive evidence, and one source's gap is not another's absence;
3. otherwise ABSENT if a source has data on it and says it is not here;
4. otherwise UNKNOWN: no source mentions it, or none covers this place.

UNKNOWN is never a reason to remove a taxon; the decision layer treats it as "no prior".
A place without a country and without a site (at sea, or no location at all) is UNKNOWN for
everything. Answers are cached per (place, lineage), so scoring 1e5 photos x 50 candidates
costs a few dictionary look-ups per candidate.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from .names import lineage_keys, norm
from .places import Place
from .sources import ABSENT, BLOCKED, PRESENT, UNKNOWN, Geofence, Listing, Where

__all__ = ["RangePrior"]

log = logging.getLogger(__name__)

_MAX_CACHED_PLACES = 50_000


class RangePrior:
    """Range data from any mix of sources; `status` answers per taxon at a place."""

    PRESENT, ABSENT, UNKNOWN = PRESENT, ABSENT, UNKNOWN

    def __init__(self, sources: Sequence[Geofence | Listing] = ()):
        self.sources = list(sources)
        self._resolutions = sorted({s.resolution for s in self.sources
                                    if isinstance(s, Listing) and s.resolution is not None})
        self._cache: dict[Where, dict[tuple, int]] = {}

    # ----- constructors ------------------------------------------------------------------------
    @classmethod
    def from_geofence(cls, path: str | Path) -> "RangePrior":
        """A SpeciesNet geofence JSON: allow/block rules per lineage prefix, by country and admin1."""
        from .sources import read_geofence

        return cls([read_geofence(path)])

    @classmethod
    def from_presence(cls, path: str | Path) -> "RangePrior":
        """A presence table written by `build_presence` (GBIF records per country and H3 cell)."""
        from .sources import read_presence

        return cls([read_presence(path)])

    @classmethod
    def from_checklist(cls, path: str | Path) -> "RangePrior":
        """A CSV of taxa per `site`, or per `country` (optionally `admin1`)."""
        from .sources import read_checklist

        return cls([read_checklist(path)])

    @classmethod
    def load(cls, paths: Sequence[str | Path] | str | Path) -> "RangePrior":
        """Any mix of geofences, presence tables and checklists, recognised by content."""
        if isinstance(paths, (str, Path)):
            paths = [paths]
        sources = []
        for p in paths:
            sources.extend(getattr(cls, f"from_{_kind(Path(p))}")(p).sources)
        return cls(sources)

    # ----- answers -----------------------------------------------------------------------------
    def status(self, lineages: Sequence[Sequence[str]], place: Place) -> np.ndarray:
        """PRESENT (1), ABSENT (0) or UNKNOWN (-1) per lineage, as int8.

        A lineage is up to 7 names in rank order ("" for an unknown rank); a shorter one is a
        higher-rank group, present where any of its members is.
        """
        if not self.sources:
            return np.full(len(lineages), UNKNOWN, dtype=np.int8)
        where = self._where(place)
        if where is None:
            return np.full(len(lineages), UNKNOWN, dtype=np.int8)
        cache = self._cache.get(where)
        if cache is None:
            if len(self._cache) >= _MAX_CACHED_PLACES:
                self._cache.clear()
            cache = self._cache[where] = {}
        keys = [x if type(x) is tuple else tuple(x) for x in lineages]
        values = [cache.get(k) for k in keys]
        if None in values:
            for i, v in enumerate(values):
                if v is None:
                    values[i] = cache[keys[i]] = self._decide(keys[i], where)
        return np.array(values, dtype=np.int8)

    def _decide(self, lineage: tuple, where: Where) -> int:
        keys = lineage_keys(lineage)
        if keys is None:
            return UNKNOWN
        answers = [s.status(keys, where) for s in self.sources]
        if BLOCKED in answers:
            return ABSENT
        if PRESENT in answers:
            return PRESENT
        return ABSENT if ABSENT in answers else UNKNOWN

    def _where(self, place: Place) -> Where | None:
        """The place as sources compare it: canonical codes, a site key, H3 neighbourhoods."""
        from .places import parse_admin1, parse_country

        country = parse_country(place.country) if place.country else None
        admin1 = parse_admin1(place.admin1, country) if place.admin1 else None
        if admin1 and not country:
            country = parse_country(admin1.split("-")[0])
        site = norm(place.site) if place.site else None
        if not country and not site:
            return None
        cells = ()
        if self._resolutions and place.latitude is not None and place.longitude is not None:
            cells = tuple((r, _neighbourhood(_cell(place.latitude, place.longitude, r))) for r in self._resolutions)
        return Where(country, admin1, site, cells)

    def describe(self) -> list[dict]:
        """Per source: kind, file name, sha256 and taxon count, for the provenance of every decision."""
        return [s.describe() for s in self.sources]

    def __repr__(self) -> str:
        return f"RangePrior({', '.join(f'{s.kind}:{s.path.name}' for s in self.sources) or 'no sources'})"


def _cell(latitude: float, longitude: float, resolution: int) -> int:
    import math

    import h3

    lat, lon = float(latitude), float(longitude)
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        raise InputError(f"coordinates ({latitude!r}, {longitude!r}) are outside the globe")
    return h3.api.basic_int.latlng_to_cell(lat, lon, resolution)


@functools.lru_cache(maxsize=65536)
def _neighbourhood(cell: int) -> frozenset[int]:
    """A cell and its ring of neighbours: records 20 km away across a cell edge count too."""
    import h3

    return frozenset(h3.api.basic_int.grid_disk(cell, 1))


def _kind(path: Path) -> str:
    """"geofence", "presence" or "checklist", from the file's first bytes (then its name)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError as e:
        raise InputError(f"{path}: cannot read range data ({e.strerror or e})") from None
    if head.startswith(b"PAR1"):
        return "presence"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        return "geofence"
    if head.startswith(b"PK"):
        raise InputError(f"{path}: a zip (a GBIF download?); turn it into a presence table first with "
                         "`taxoclip geo build`")
    first = head.split(b"\n", 1)[0].decode("utf-8-sig", "replace")
    if "gbifID" in first or "decimalLatitude" in first:
        raise InputError(f"{path}: a GBIF occurrence download; turn it into a presence table first with "
                         "`taxoclip geo build`")
    if path.suffix.lower() in (".csv", ".tsv", ".txt", ".tab") or "," in first or "\t" in first:
        return "checklist"
    raise InputError(f"{path}: not range data (expected a geofence .json, a presence .parquet or a checklist .csv)")

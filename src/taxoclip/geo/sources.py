"""The kinds of range data `RangePrior` reads, each answering "is this taxon here?".

Every source answers per taxon (by its match keys, `taxoclip.geo.names`) at a `Where` (a
normalised place) with PRESENT, ABSENT, UNKNOWN, or BLOCKED: an explicit block rule of a
geofence, the one answer that overrides presence found elsewhere.

* `Geofence`: SpeciesNet's geofence JSON. Keys are lineages "class;order;family;genus;species"
  (lower case, "" for a missing rank); values hold `allow` and/or `block`, each a map from
  alpha-3 country to a list of admin1 codes ("CA" or "US-CA"; an empty list = the whole
  country). A taxon with an `allow` map is absent from every country (or listed admin1) not in
  it; `block` removes it where listed. Rules of a group apply to its members (a blocked genus
  blocks its species), and a group is present where any member is allowed.
* `Listing`: a list of taxa per region. GBIF presence tables (regions: countries and H3 cells)
  and checklists (regions: sites, countries, admin1 regions) are both listings. A taxon the
  listing mentions is present in a region where it or a member is listed, absent in a region
  the listing covers without listing it, unknown elsewhere.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ..cache import file_sha256
from ..errors import InputError
from .names import lineage_keys, norm

__all__ = ["PRESENT", "ABSENT", "UNKNOWN", "BLOCKED", "Where", "Geofence", "Listing",
           "read_geofence", "read_presence", "read_checklist", "file_sha256"]

log = logging.getLogger(__name__)

PRESENT, ABSENT, UNKNOWN = 1, 0, -1
BLOCKED = 2  # internal: an explicit geofence block; reported as ABSENT

Region = tuple[str, str]  # ("country", "FRA"), ("admin1", "US-CA"), ("site", "plot 7")


@dataclass(frozen=True)
class Where:
    """A place reduced to what sources compare: codes, a site key and H3 neighbourhoods."""

    country: str | None = None
    admin1: str | None = None
    site: str | None = None  # normalised with `norm`
    cells: tuple[tuple[int, frozenset[int]], ...] = ()  # (resolution, the cell and its neighbours)

    @property
    def regions(self) -> tuple[Region, ...]:
        out = []
        if self.site:
            out.append(("site", self.site))
        if self.admin1:
            out.append(("admin1", self.admin1))
        if self.country:
            out.append(("country", self.country))
        return tuple(out)

    def cells_at(self, resolution: int) -> frozenset[int]:
        for res, cells in self.cells:
            if res == resolution:
                return cells
        return frozenset()


# ----- geofence ------------------------------------------------------------------------------
@dataclass
class _Rule:
    keys: tuple[str, ...]
    allow: dict[str, frozenset[str]] | None  # country -> admin1 codes (empty: the whole country)
    block: dict[str, frozenset[str]] | None

    def allowed(self, country: str, admin1: str | None) -> bool | None:
        """True/False under an allow rule; None when the rule has none."""
        if not self.allow:
            return None
        regions = self.allow.get(country)
        if regions is None:
            return False
        return not regions or not admin1 or admin1 in regions

    def blocked(self, country: str, admin1: str | None) -> bool:
        if not self.block or country not in self.block:
            return False
        regions = self.block[country]
        return not regions or (admin1 is not None and admin1 in regions)


@dataclass
class Geofence:
    kind = "geofence"
    path: Path
    sha256: str
    rules: list[_Rule]
    _own: dict[str, list[int]] = field(default_factory=dict)  # deepest key -> rules
    _members: dict[str, list[int]] = field(default_factory=dict)  # any key -> rules of it and its members

    def __post_init__(self) -> None:
        for i, r in enumerate(self.rules):
            self._own.setdefault(r.keys[-1], []).append(i)
            for k in r.keys:
                self._members.setdefault(k, []).append(i)

    def status(self, keys: tuple[str, ...], where: Where) -> int:
        if not where.country:
            return UNKNOWN  # geofences are keyed by country; SpeciesNet does not fence without one
        c, a = where.country, where.admin1
        groups = [self.rules[i] for k in keys for i in self._own.get(k, ())]  # the taxon and its groups
        if any(r.blocked(c, a) for r in groups):
            return BLOCKED
        state = UNKNOWN
        for i in self._members.get(keys[-1], ()):  # the taxon and its members
            r = self.rules[i]
            allowed = r.allowed(c, a)
            if allowed:
                return PRESENT
            if allowed is False or r.blocked(c, a):
                state = ABSENT
        if state == UNKNOWN and any(r.allowed(c, a) is False for r in groups):
            state = ABSENT  # outside the range of a group it belongs to
        return state

    def describe(self) -> dict:
        return {"kind": self.kind, "path": self.path.name, "sha256": self.sha256, "taxa": len(self.rules)}


def read_geofence(path: str | Path) -> Geofence:
    """A SpeciesNet geofence JSON (`geofence_release.json` or one written in its format)."""
    from .places import _alpha2

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a readable geofence JSON ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a geofence is a JSON object of lineage -> {{allow, block}}")
    rules = []
    for label, spec in data.items():
        if not isinstance(spec, dict) or not set(spec) <= {"allow", "block"}:
            raise InputError(f"{path}: entry {label!r}: expected an object with 'allow' and/or 'block'")
        keys = _geofence_keys(label, path)
        if keys is None:
            log.warning("%s: entry %r names no taxon; ignored", path, label)
            continue
        maps = {}
        for kind in ("allow", "block"):
            regions = spec.get(kind)
            if regions is None:
                maps[kind] = None
                continue
            if not isinstance(regions, dict):
                raise InputError(f"{path}: entry {label!r}: {kind!r} must map countries to lists of regions")
            maps[kind] = {}
            for country, admin1s in regions.items():
                cc = str(country).strip().upper()
                if len(cc) != 3 or not cc.isalpha():
                    raise InputError(f"{path}: entry {label!r}: {country!r} is not an ISO 3166-1 alpha-3 code")
                a2 = _alpha2(cc)
                codes = frozenset(_admin1_code(str(x), a2) for x in (admin1s or ()))
                maps[kind][cc] = codes
        rules.append(_Rule(keys, maps["allow"], maps["block"]))
    return Geofence(path, file_sha256(path), rules)


def _admin1_code(code: str, alpha2: str | None) -> str:
    """SpeciesNet writes admin1 regions without the country prefix ("NJ"); we compare "US-NJ"."""
    code = code.strip().upper()
    return code if "-" in code or not alpha2 else f"{alpha2}-{code}"


def _geofence_keys(label: str, path: Path) -> tuple[str, ...] | None:
    parts = [p.strip() for p in str(label).split(";")]
    if len(parts) == 5:  # class;order;family;genus;species (SpeciesNet)
        parts = ["", ""] + parts
    if len(parts) != 7:
        raise InputError(f"{path}: entry {label!r}: expected 'class;order;family;genus;species' "
                         "(5 fields) or 7 fields from kingdom")
    words = parts[6].split()
    keys = lineage_keys(parts[:6] + [words[0] if words else ""])
    if keys is not None and len(words) > 1:  # a subspecies: a member of its species, never equal to it
        keys = keys + (f"{keys[-1]} {norm(' '.join(words[1:]))}",)
    return keys


# ----- listings (presence tables and checklists) ---------------------------------------------------
class Listing:
    """Taxa listed per region, with the regions where an unlisted taxon counts as absent."""

    def __init__(self, kind: str, path: Path, sha256: str, taxa: list[tuple[str, ...]],
                 regions: Mapping[Region, np.ndarray], covered: Iterable[Region],
                 cells: tuple[int, np.ndarray, np.ndarray] | None = None):
        self.kind, self.path, self.sha256 = kind, path, sha256
        self.taxa = taxa  # match keys per taxon id
        self.regions = dict(regions)  # region -> taxon ids listed there
        self.covered = frozenset(covered)
        self.mentioned = frozenset(k for keys in taxa for k in keys)
        self.resolution: int | None = None
        if cells is not None:  # (resolution, sorted cell ids, taxon id per cell row)
            self.resolution, self._cell_ids, self._cell_taxa = cells
        self._present: dict[object, frozenset[str]] = {}

    def _keys_of(self, tids: np.ndarray) -> frozenset[str]:
        return frozenset(k for t in np.unique(tids) for k in self.taxa[t])

    def present_keys(self, region: Region) -> frozenset[str]:
        """Every key (taxon or group) listed in a region; computed once per region."""
        hit = self._present.get(region)
        if hit is None:
            tids = self.regions.get(region)
            hit = self._present[region] = self._keys_of(tids) if tids is not None else frozenset()
        return hit

    def present_keys_near(self, cells: frozenset[int]) -> frozenset[str]:
        if self.resolution is None or not cells:
            return frozenset()
        hit = self._present.get(cells)
        if hit is None:
            parts = []
            for c in cells:
                lo = np.searchsorted(self._cell_ids, c, side="left")
                hi = np.searchsorted(self._cell_ids, c, side="right")
                parts.append(self._cell_taxa[lo:hi])
            hit = self._keys_of(np.concatenate(parts)) if parts else frozenset()
            if len(self._present) > 100_000:
                self._present.clear()
            self._present[cells] = hit
        return hit

    def status(self, keys: tuple[str, ...], where: Where) -> int:
        key = keys[-1]
        if key not in self.mentioned:
            return UNKNOWN
        if self.resolution is not None and key in self.present_keys_near(where.cells_at(self.resolution)):
            return PRESENT
        regions = where.regions
        if any(key in self.present_keys(r) for r in regions):
            return PRESENT
        if any(r in self.covered for r in regions):
            return ABSENT
        return UNKNOWN

    def describe(self) -> dict:
        out = {"kind": self.kind, "path": self.path.name, "sha256": self.sha256, "taxa": len(self.taxa)}
        if self.resolution is not None:
            out["h3_resolution"] = self.resolution
        return out


def _taxa_ids(frame, columns: list[str]) -> tuple[np.ndarray, list[tuple[str, ...]], np.ndarray]:
    """Per row, the id of its taxon; the taxa's match keys; and which rows name a taxon at all."""
    import pandas as pd

    codes, uniques = pd.MultiIndex.from_frame(frame[columns].astype(str)).factorize()
    keys = [lineage_keys(u) for u in uniques]
    # Different spellings of one lineage share keys: give them one id.
    ids: dict[tuple[str, ...], int] = {}
    remap = np.array([ids.setdefault(k, len(ids)) if k is not None else -1 for k in keys], dtype=np.int64)
    tids = remap[codes] if len(codes) else np.zeros(0, dtype=np.int64)
    return tids, list(ids), tids >= 0


def read_presence(path: str | Path) -> Listing:
    """A presence table written by `build_presence`: taxa per country and per H3 cell."""
    import pandas as pd
    import pyarrow.parquet as pq

    from .presence import LINEAGE_COLUMNS, read_metadata

    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable Parquet presence table ({e})") from None
    missing = [c for c in LINEAGE_COLUMNS + ["country"] if c not in table.column_names]
    if missing:
        raise InputError(f"{path}: not a presence table (no column {', '.join(missing)}); "
                         "build one with `taxoclip geo build`")
    meta = read_metadata(table.schema)
    df = table.select(LINEAGE_COLUMNS + ["country"]).to_pandas()
    for c in LINEAGE_COLUMNS:
        df[c] = df[c].astype(object).where(df[c].notna(), "")
    tids, taxa, named = _taxa_ids(df, LINEAGE_COLUMNS)
    country = df["country"].astype(object).to_numpy()
    pos = np.flatnonzero(named & pd.notna(country) & (country != ""))
    regions = {("country", str(c)): tids[pos[i]] for c, i in
               pd.Series(country[pos]).groupby(country[pos], sort=False).indices.items()}
    cells = None
    if "h3_cell" in table.column_names:  # int64 read through Arrow: a float64 detour would round the ids
        col = table.column("h3_cell").combine_chunks()
        ok = named & col.is_valid().to_numpy(zero_copy_only=False)
        if ok.any():
            ids = col.fill_null(0).to_numpy()[ok].astype(np.int64)
            order = np.argsort(ids, kind="stable")
            resolution = meta.get("h3_resolution")
            if resolution is None:
                import h3

                resolution = h3.api.basic_int.get_resolution(int(ids[0]))
            cells = (int(resolution), ids[order], tids[ok][order])
    covered = [("country", c) for _, c in regions]
    return Listing("presence", path, file_sha256(path), taxa, regions, covered, cells)


# Column spellings a checklist may use, lower-cased.
_SITE_COLUMNS = ("site", "site_name", "sitename", "location", "locality_id")
_COUNTRY_COLUMNS = ("country", "country_code", "countrycode", "iso3")
_ADMIN1_COLUMNS = ("admin1", "admin1_region", "admin1_region_code", "state_code")


def read_checklist(path: str | Path) -> Listing:
    """A CSV/TSV checklist: one row per taxon and site (or country, optionally admin1 region).

    The taxon is `scientificName` (a binomial, or one name at any rank) or rank columns
    (`kingdom` … `genus`, `species_epithet`/`specificEpithet` or a binomial `species`). Sites are
    matched to `Place.site` case-insensitively.
    """
    import pandas as pd

    from ..taxonomy import Taxon

    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig") as fh:
            header = fh.readline()
        sep = "\t" if path.suffix.lower() in (".tsv", ".tab") or header.count("\t") > header.count(",") else ","
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise InputError(f"{path}: not a readable checklist CSV ({e})") from None
    lower = {c.strip().lower(): c for c in df.columns}
    pick = lambda names: next((lower[n] for n in names if n in lower), None)
    site_col, country_col, admin1_col = pick(_SITE_COLUMNS), pick(_COUNTRY_COLUMNS), pick(_ADMIN1_COLUMNS)
    if site_col is None and country_col is None:
        raise InputError(f"{path}: a checklist needs a 'site' or a 'country' column (columns: {', '.join(df.columns)})")
    taxon_cols = [c for c in df.columns if c.strip().lower().replace("_", "") in
                  ("scientificname", "kingdom", "phylum", "class", "order", "family", "genus", "species",
                   "speciesepithet", "specificepithet", "taxonrank")]
    if not any(c.strip().lower().replace("_", "") in ("scientificname", "species", "genus", "family", "order",
                                                       "class", "phylum", "kingdom") for c in taxon_cols):
        raise InputError(f"{path}: a checklist needs a 'scientificName' column or rank columns "
                         f"(kingdom … species_epithet)")
    rows_lineage, rows_region, covered = [], [], set()
    for i, row in enumerate(df.to_dict("records"), start=2):
        try:
            taxon = Taxon.from_record({c: row[c] for c in taxon_cols})
            region = _checklist_region(row, site_col, country_col, admin1_col)
        except (InputError, ValueError) as e:
            raise InputError(f"{path}: line {i}: {e}") from None
        if taxon.empty or region is None:
            continue
        rows_lineage.append(taxon.ranks)
        rows_region.append(region)
        covered.add(region)
        if region[0] == "admin1":  # listed in a region of a country: listed in that country too
            rows_lineage.append(taxon.ranks)
            rows_region.append(("country", _country_of_admin1(region[1])))
    if not rows_lineage:
        raise InputError(f"{path}: no checklist rows with both a taxon and a place")
    frame = pd.DataFrame(rows_lineage, columns=[f"r{i}" for i in range(7)])
    tids, taxa, named = _taxa_ids(frame, list(frame.columns))
    regions: dict[Region, list[int]] = {}
    for t, region, ok in zip(tids, rows_region, named):
        if ok:
            regions.setdefault(region, []).append(int(t))
    return Listing("checklist", path, file_sha256(path), taxa,
                   {r: np.asarray(v, dtype=np.int64) for r, v in regions.items()}, covered)


def _checklist_region(row: dict, site_col: str | None, country_col: str | None,
                      admin1_col: str | None) -> Region | None:
    from .places import parse_admin1, parse_country

    site = norm(row[site_col]) if site_col else ""
    if site:
        return ("site", site)
    country = parse_country(row[country_col]) if country_col and row[country_col].strip() else None
    admin1 = row[admin1_col].strip() if admin1_col else ""
    if admin1:
        return ("admin1", parse_admin1(admin1, country))
    return ("country", country) if country else None


def _country_of_admin1(code: str) -> str:
    from .places import parse_country

    return parse_country(code.split("-")[0])

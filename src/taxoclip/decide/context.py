"""Where and when each photo was taken: from a CSV's columns or the photo's EXIF.

A decision's location prior and event grouping read these; `predict` stores them in the
scores file, so `decide` sees the same context without the photos.
"""
from __future__ import annotations

import os
from datetime import datetime
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from ..errors import InputError
from .scores import CONTEXT_COLUMNS

__all__ = ["read_context", "photo_context", "with_context", "places", "parse_time"]

_ALIASES = {
    "latitude": ("latitude", "lat", "decimallatitude"), "longitude": ("longitude", "lon", "lng", "decimallongitude"),
    "country": ("country", "countrycode", "country_code"), "admin1": ("admin1", "stateprovince", "admin1_region"),
    "site": ("site", "location", "locationid"), "deployment": ("deployment", "deploymentid", "deployment_id", "camera"),
    "datetime": ("datetime", "timestamp", "datetimeoriginal", "eventdate", "date_time"),
}
_KEYS = ("filepath", "file_path", "path", "file_name", "filename")


def read_context(path: str | os.PathLike) -> pd.DataFrame:
    """A CSV with a file column (`filepath`/`file_name`) and any context columns (aliases such as
    `decimalLatitude`, `countryCode`, `deploymentID`, `timestamp` are understood).

    File paths are resolved as the image list reader resolves them (relative to the CSV), so
    they match the `file_name` that `predict` reports for the same CSV."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read photo context {path}: {e}") from None
    cols = {c.strip().lower(): c for c in df.columns}
    key = next((cols[c] for c in _KEYS if c in cols), None)
    if key is None:
        raise InputError(f"{path}: no 'filepath' or 'file_name' column (columns: {', '.join(df.columns)})")
    base = os.path.dirname(os.fspath(path))
    names = [e if os.path.isabs(e) or os.path.exists(e) or not base else os.path.join(base, e)
             for e in df[key].str.strip()]
    out = pd.DataFrame({"file_name": names})
    for c, aliases in _ALIASES.items():
        src = next((cols[a] for a in aliases if a in cols), None)
        if src is None:
            continue
        values = df[src].str.strip().replace("", None)
        out[c] = pd.to_numeric(values, errors="coerce") if c in ("latitude", "longitude") else values
        if c in ("latitude", "longitude"):
            bad = values.notna() & out[c].isna()
            if bad.any():
                raise InputError(f"{path}: {c} is not a number for {out.loc[bad, 'file_name'].iloc[0]} "
                                 f"({values[bad].iloc[0]!r})")
    return out


def photo_context(names: Sequence[str], given: pd.DataFrame | None = None, *, exif: bool = True) -> pd.DataFrame:
    """Context for photos: columns from `given` (matched by file name) and, where a photo has
    no location or time there, its EXIF GPS position and DateTimeOriginal."""
    df = pd.DataFrame({"file_name": list(names)})
    if given is not None and len(given):
        df = df.merge(given.drop_duplicates("file_name"), on="file_name", how="left")
    for c in CONTEXT_COLUMNS:
        if c not in df.columns:
            df[c] = None
    if exif:
        for i, name in enumerate(df["file_name"]):
            need_place = pd.isna(df.at[i, "latitude"]) and pd.isna(df.at[i, "country"]) and pd.isna(df.at[i, "site"])
            need_time = pd.isna(df.at[i, "datetime"])
            if (need_place or need_time) and os.path.isfile(name):
                gps, when = _exif(name)
                if need_place and gps is not None:
                    df.at[i, "latitude"], df.at[i, "longitude"] = gps
                if need_time and when:
                    df.at[i, "datetime"] = when
    return df


def _exif(path: str) -> tuple[tuple[float, float] | None, str | None]:
    from PIL import Image

    from ..geo import exif_location

    try:
        with Image.open(path) as img:
            gps = exif_location(img)
            raw = img.getexif().get_ifd(0x8769).get(36867)  # DateTimeOriginal
    except (OSError, ValueError, SyntaxError):
        return None, None
    when = None
    if isinstance(raw, str):
        try:
            when = datetime.strptime(raw.strip(), "%Y:%m:%d %H:%M:%S").isoformat()
        except ValueError:
            when = None
    return gps, when


def parse_time(values: Sequence) -> np.ndarray:
    """ISO or EXIF-style times -> seconds since the epoch (NaN where missing or unreadable)."""
    s = pd.Series(list(values), dtype=object).astype("string").str.replace(
        r"^(\d{4}):(\d{2}):(\d{2})", r"\1-\2-\3", regex=True)
    t = pd.to_datetime(s, errors="coerce", utc=True, format="mixed")
    return (t - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=np.float64) if len(t) else np.zeros(0)


def places(table: pa.Table, notes: list[list[str]]) -> tuple[np.ndarray, list]:
    """One place id per row (-1: none known, with a note why) and the distinct places.

    Each distinct combination of location columns is resolved once (a camera's photos share one)."""
    rows = table.num_rows
    names = ("latitude", "longitude", "country", "admin1", "site")
    cols = [table.column(c).to_pylist() if c in table.column_names else [None] * rows for c in names]
    errors = table.column("error").to_pylist()
    ids = np.full(rows, -1, dtype=np.int64)
    resolved: dict[tuple, tuple[int, str]] = {}
    index: dict = {}
    for i, key in enumerate(zip(*cols)):
        if errors[i] is not None:
            continue
        if key not in resolved:
            place, note = _place(*key)
            resolved[key] = (index.setdefault(place, len(index)) if place is not None else -1, note)
        ids[i], note = resolved[key]
        if note:
            notes[i].append(note)
    return ids, list(index)


def _place(lat, lon, country, admin1, site):
    """(Place or None, note) for one combination of location columns."""
    from ..geo import Place, locate, parse_admin1, parse_country

    try:
        place = locate(lat, lon) if lat is not None and lon is not None else Place()
        if country:
            place = Place(parse_country(country), place.admin1, place.latitude, place.longitude, place.site)
        if admin1:
            place = Place(place.country, parse_admin1(admin1, place.country), place.latitude, place.longitude,
                          place.site)
        if site:
            place = Place(place.country, place.admin1, place.latitude, place.longitude, site)
    except InputError as e:
        return None, f"{e}: no location prior"
    if place == Place():
        return None, "no location (no EXIF GPS, no location column): no location prior"
    if place.country is None and place.site is None:
        return place, f"{lat}, {lon} is in no country (at sea?): no location prior"
    return place, ""


def with_context(table: pa.Table, context: pd.DataFrame | None) -> pa.Table:
    """`table` with the context columns that `context` gives for its photos replaced."""
    if context is None:
        return table
    names = table.column("file_name").to_pylist()
    given = pd.DataFrame({"file_name": names}).merge(context.drop_duplicates("file_name"), on="file_name", how="left")
    for c, kind in CONTEXT_COLUMNS.items():
        if c not in context.columns:
            continue
        old = table.column(c).to_pylist()
        new = [o if pd.isna(v) else v for o, v in zip(old, given[c].tolist())]
        table = table.set_column(table.schema.get_field_index(c), c, pa.array(new, type=kind))
    return table

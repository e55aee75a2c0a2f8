"""GBIF occurrence downloads -> a compact presence table (taxon x country, taxon x H3 cell).

A download is the "simple CSV" (tab-separated, one header line; often inside a zip) or a
Darwin Core Archive (a zip or folder with `meta.xml`). Either is streamed once with Arrow's
CSV reader, a block at a time, keeping only the dozen columns used; what grows is the
tally, which is as big as the result (distinct taxon x place pairs), never as the input.
So a 100 GB download needs the memory of its answer, not of its rows.

Output Parquet, one row per taxon and place:

    kingdom … genus, species_epithet   the taxon (dictionary-encoded strings)
    country                            ISO 3166-1 alpha-3, or null on a cell row
    h3_cell                            H3 cell id (int64) at `h3_resolution`, or null on a country row
    occurrences                        how many records support the row

The schema metadata key `taxoclip.presence` holds JSON with `h3_resolution` and the counts.
"""
from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from ..durable import atomic_file
from ..errors import InputError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

__all__ = ["build_presence", "LINEAGE_COLUMNS", "read_metadata"]

log = logging.getLogger(__name__)

LINEAGE_COLUMNS = ["kingdom", "phylum", "class", "order", "family", "genus", "species_epithet"]
METADATA_KEY = b"taxoclip.presence"
FORMAT_VERSION = 1
_HIGHER = ["kingdom", "phylum", "class", "order", "family", "genus"]
_TERMS = _HIGHER + ["species", "countryCode", "decimalLatitude", "decimalLongitude"]
_BLOCK_BYTES = 16 << 20  # Arrow CSV block: ~100K rows of a simple CSV per step
_COMPACT_ROWS = 2_000_000  # tally rows buffered before they are summed


def read_metadata(schema: "pa.Schema") -> dict:
    raw = (schema.metadata or {}).get(METADATA_KEY)
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {}


# ----- reading a download ------------------------------------------------------------------------
class _Download:
    """Where the occurrence rows are and how to parse them: a file opener and CSV options."""

    def __init__(self, name: str, opener: Callable, delimiter: str, quote: str, encoding: str,
                 header_lines: int, columns: dict[str, int] | None, defaults: dict[str, str],
                 header: list[str] | None = None):
        self.name, self.opener = name, opener
        self.header = header  # the column names of a simple CSV
        self.delimiter, self.quote, self.encoding = delimiter, quote, encoding
        self.header_lines = header_lines
        self.columns = columns  # term -> column index (DwC-A); None: named by the header line
        self.defaults = defaults  # term -> constant value given by meta.xml


def _open_download(path: Path) -> _Download:
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir() or zipfile.is_zipfile(path):
        members = _members(path)
        if any(m.rsplit("/", 1)[-1].lower() in ("meta.xml", "occurrence.txt") for m in members):
            return _dwca(path)
        tables = [m for m in members if m.lower().endswith((".csv", ".txt", ".tsv"))]
        if path.is_file() and len(tables) == 1:  # GBIF's simple CSV comes zipped, one file inside
            member = tables[0]

            def opener():
                z = zipfile.ZipFile(path)
                return _Closing(z.open(member), z)
            return _simple(f"{path}/{member}", opener)
        raise InputError(f"{path}: neither a Darwin Core Archive (no meta.xml or occurrence.txt) nor a zipped "
                         "GBIF simple CSV (one .csv inside)")
    import pyarrow as pa

    return _simple(str(path), lambda: pa.input_stream(str(path), compression="detect"))


def _members(path: Path) -> list[str]:
    if path.is_dir():
        return [p.name for p in path.iterdir()]
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(f"{path}: unreadable zip ({e})") from None


class _Closing:
    """A zip member stream that also closes its zip file."""

    def __init__(self, stream, owner):
        self.stream, self.owner = stream, owner

    def __getattr__(self, name):
        return getattr(self.stream, name)

    def read(self, *args):
        return self.stream.read(*args)

    def close(self):
        self.stream.close()
        self.owner.close()

    @property
    def closed(self):
        return self.stream.closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _simple(name: str, opener: Callable) -> _Download:
    with opener() as fh:
        head = fh.read(1 << 16)
    if isinstance(head, memoryview):
        head = bytes(head)
    first = head.split(b"\n", 1)[0].decode("utf-8-sig", "replace").rstrip("\r")
    tab = first.count("\t") >= first.count(",")
    header = [h.strip().strip('"') for h in first.split("\t" if tab else ",")]
    return _Download(name, opener, "\t" if tab else ",", "" if tab else '"', "utf8", 0, None, {}, header)


def _dwca(path: Path) -> _Download:
    """A Darwin Core Archive's Occurrence core, as its meta.xml (or header line) describes it."""
    from ..io.dwca import Archive

    with Archive(path) as archive:
        core, _ = archive.tables()
    columns = {t: i for t, i, _ in core.fields if i is not None}
    defaults = {t: d for t, i, d in core.fields if d}
    location, delimiter, quote, encoding = core.location, core.delimiter, core.quotechar, core.encoding

    def opener():
        a = Archive(path)
        return _Closing(a.open_binary(location), a)
    return _Download(archive.describe(location), opener, delimiter, quote, encoding, core.header_lines, columns, defaults)


def _batches(dl: _Download, skipped: dict[str, int]) -> Iterator["pd.DataFrame"]:
    """The download's rows as DataFrames of string columns named by Darwin Core term."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    def bad_row(row) -> str:
        skipped["malformed"] += 1
        return "skip"

    parse = pacsv.ParseOptions(delimiter=dl.delimiter, quote_char=dl.quote or False,
                               newlines_in_values=False, invalid_row_handler=bad_row)
    encoding = dl.encoding.lower().replace("-", "").replace("_", "")
    read = dict(block_size=_BLOCK_BYTES, encoding="utf8" if encoding in ("utf8", "utf8sig") else dl.encoding)
    if dl.columns is not None:
        wanted = {t: i for t, i in dl.columns.items() if t in _TERMS}
        width = _width(dl)
        names = [f"f{i}" for i in range(width)]
        read.update(column_names=names, skip_rows=dl.header_lines)
        include = {f"f{i}": t for t, i in wanted.items() if i < width}
    else:
        include = None
    with dl.opener() as fh:
        try:
            reader = pacsv.open_csv(fh, read_options=pacsv.ReadOptions(**read), parse_options=parse,
                                    convert_options=_convert(include, dl.header))
            for batch in reader:
                df = batch.to_pandas()
                if include is not None:
                    df = df.rename(columns=include)
                for term, value in dl.defaults.items():
                    if term in _TERMS:
                        df[term] = df[term].where(df[term] != "", value) if term in df else value
                yield df
        except pa.ArrowInvalid as e:
            raise InputError(f"{dl.name}: cannot read as an occurrence table ({e})") from None


def _convert(include: dict[str, str] | None, header: list[str] | None):
    """Read only the columns used, all as strings (type inference would trip on odd rows)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    cols = list(include) if include is not None else [t for t in _TERMS if t in (header or ())]
    return pacsv.ConvertOptions(include_columns=cols, column_types={c: pa.string() for c in cols},
                                strings_can_be_null=False, quoted_strings_can_be_null=False)


def _check_columns(dl: _Download) -> None:
    """A download without a species column or any place column is the wrong file, not bad rows."""
    have = set(dl.columns or ()) | set(dl.header or ()) | set(dl.defaults)
    missing = [t for t in ("species",) if t not in have]
    if not {"countryCode", "decimalLatitude"} & have:
        missing.append("countryCode or decimalLatitude/decimalLongitude")
    if missing:
        raise InputError(f"{dl.name}: not a GBIF occurrence download: no {' and no '.join(missing)} column")


def _width(dl: _Download) -> int:
    """How many columns the data file has (Arrow needs it when meta.xml, not a header, names them)."""
    import csv

    with dl.opener() as fh:
        line = fh.readline() if hasattr(fh, "readline") else fh.read(1 << 20).split(b"\n", 1)[0]
    text = bytes(line).decode("utf-8-sig", "replace").rstrip("\r\n")
    if dl.quote:
        return len(next(csv.reader([text], delimiter=dl.delimiter, quotechar=dl.quote), [""]))
    return text.count(dl.delimiter) + 1


# ----- tallying ----------------------------------------------------------------------------------
class _Tally:
    """Counts per (taxon id, place id) pair, summed in bulk so memory follows distinct pairs."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.rows = 0

    def add(self, taxa: np.ndarray, places: np.ndarray) -> None:
        if len(taxa):
            self.parts.append((taxa.astype(np.int64), places.astype(np.int64), np.ones(len(taxa), np.int64)))
            self.rows += len(taxa)
            if self.rows > _COMPACT_ROWS:
                self.compact()

    def compact(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import pandas as pd

        if not self.parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        t, p, n = (np.concatenate(x) for x in zip(*self.parts))
        s = pd.DataFrame({"t": t, "p": p, "n": n}).groupby(["t", "p"], sort=True)["n"].sum()
        out = (s.index.get_level_values(0).to_numpy(np.int64), s.index.get_level_values(1).to_numpy(np.int64),
               s.to_numpy(np.int64))
        self.parts, self.rows = [out], len(out[0])
        return out


class _Builder:
    def __init__(self, resolution: int):
        import h3

        self.h3 = h3.api.basic_int
        self.resolution = resolution
        self.taxa: dict[tuple[str, ...], int] = {}
        self.countries: dict[str, int] = {}
        self.by_country, self.by_cell = _Tally(), _Tally()
        self.rows = self.used = self.without_coordinates = 0
        self.skipped = {"malformed": 0, "no_species": 0, "bad_coordinates": 0, "no_location": 0}

    def add(self, df: "pd.DataFrame") -> None:
        import pandas as pd

        from .places import alpha2_to_alpha3, locate_many

        n = len(df)
        self.rows += n
        if not n:
            return
        get = lambda term: df[term].str.strip() if term in df else pd.Series([""] * n, index=df.index)
        species = get("species").str.split().str.join(" ").fillna("")
        parts = species.str.partition(" ")
        first, epithet = parts[0], parts[2]
        ok = (epithet != "").to_numpy().copy()
        self.skipped["no_species"] += int((~ok).sum())

        lat_text, lon_text = get("decimalLatitude"), get("decimalLongitude")
        lat = pd.to_numeric(lat_text, errors="coerce").to_numpy(float)
        lon = pd.to_numeric(lon_text, errors="coerce").to_numpy(float)
        given = ((lat_text != "") | (lon_text != "")).to_numpy()
        valid = (np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180)
                 & ~((lat == 0) & (lon == 0)))  # (0, 0): GBIF's classic placeholder for "no coordinates"
        bad = ok & given & ~valid
        self.skipped["bad_coordinates"] += int(bad.sum())
        ok &= ~bad
        has_xy = ok & valid

        country = get("countryCode").str.upper().map(alpha2_to_alpha3()).to_numpy(dtype=object)
        need = ok & has_xy & pd.isna(country)
        if need.any():  # no usable country code but coordinates: locate them
            idx = np.flatnonzero(need)
            for i, place in zip(idx, locate_many(lat[idx], lon[idx])):
                country[i] = place.country
        has_country = ok & ~pd.isna(country)
        no_location = ok & ~has_country & ~has_xy
        self.skipped["no_location"] += int(no_location.sum())
        ok &= ~no_location
        self.without_coordinates += int((ok & ~has_xy).sum())
        self.used += int(ok.sum())
        if not ok.any():
            return

        lineage = pd.DataFrame({r: get(r) for r in _HIGHER})
        for r in _HIGHER:
            lineage.loc[lineage[r].str.lower() == "incertae sedis", r] = ""
        lineage["genus"] = first  # the binomial's genus: species and genus columns must agree
        lineage["species_epithet"] = epithet.str.lower()
        rows = np.flatnonzero(ok)
        codes, uniques = pd.MultiIndex.from_frame(lineage.iloc[rows]).factorize()
        ids = np.array([self.taxa.setdefault(tuple(u), len(self.taxa)) for u in uniques], dtype=np.int64)
        tids = ids[codes]

        c_mask = has_country[rows]
        c_ids = np.array([self.countries.setdefault(c, len(self.countries)) for c in country[rows[c_mask]]],
                         dtype=np.int64)
        self.by_country.add(tids[c_mask], c_ids)

        xy = has_xy[rows]
        if xy.any():
            pts = pd.DataFrame({"lat": lat[rows[xy]], "lon": lon[rows[xy]]})
            uniq = pts.drop_duplicates()
            cells = {(a, b): self.h3.latlng_to_cell(a, b, self.resolution) for a, b in zip(uniq["lat"], uniq["lon"])}
            cell_ids = np.fromiter((cells[(a, b)] for a, b in zip(pts["lat"], pts["lon"])), dtype=np.uint64,
                                   count=len(pts)).astype(np.int64)
            self.by_cell.add(tids[xy], cell_ids)

    def table(self, source: str) -> tuple["pa.Table", dict]:
        import pyarrow as pa

        taxa = list(self.taxa)
        ct, cc, cn = self.by_country.compact()
        lt, lc, ln = self.by_cell.compact()
        country_names = np.array(list(self.countries), dtype=object)
        tids = np.concatenate([ct, lt])
        columns = {}
        for j, name in enumerate(LINEAGE_COLUMNS):
            values = [t[j] for t in taxa]
            dictionary, index = np.unique(np.array(values, dtype=object).astype(str), return_inverse=True) \
                if taxa else (np.array([], dtype=str), np.zeros(0, np.int64))
            columns[name] = pa.DictionaryArray.from_arrays(pa.array(index[tids].astype(np.int32)),
                                                           pa.array(dictionary.tolist(), pa.string()))
        columns["country"] = pa.array(list(country_names[cc]) + [None] * len(lt), pa.string())
        columns["h3_cell"] = pa.array(np.concatenate([np.zeros(len(ct), np.int64), lc]),
                                      mask=np.concatenate([np.ones(len(ct), bool), np.zeros(len(lt), bool)]))
        columns["occurrences"] = pa.array(np.concatenate([cn, ln]))
        stats = {"rows": self.rows, "used": self.used, "taxa": len(taxa), "countries": len(self.countries),
                 "cells": int(len(np.unique(lc))), "country_rows": int(len(ct)), "cell_rows": int(len(lt)),
                 "without_coordinates": self.without_coordinates, "skipped": dict(self.skipped),
                 "h3_resolution": self.resolution}
        meta = {"version": FORMAT_VERSION, "h3_resolution": self.resolution, "source": source, **stats}
        table = pa.table(columns).replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})
        return table, stats


def build_presence(download: str | Path, out: str | Path, *, h3_resolution: int = 4,
                   progress: bool | None = None) -> dict:
    """Stream a GBIF download into a presence table at `out` (written atomically); return counts.

    Rows without a species, with unusable coordinates or with no place at all are skipped and
    counted under `skipped`, never fatal: one bad row in a hundred million must not cost the
    other rows. A row without a country code but with coordinates is located offline.
    Resolution 4 cells (~1,770 km², ~22 km edge) are about the scale at which occurrence data
    tell a species' range from its absence; finer cells mostly record where people looked.
    """
    import pyarrow.parquet as pq

    if not 0 <= int(h3_resolution) <= 15:
        raise InputError(f"H3 resolution {h3_resolution} is outside 0..15")
    path, out = Path(download), Path(out)
    dl = _open_download(path)
    _check_columns(dl)
    builder = _Builder(int(h3_resolution))
    bar = _progress(dl.name, progress)
    try:
        for df in _batches(dl, builder.skipped):
            builder.add(df)
            bar.update(len(df))
    finally:
        bar.close()
    if builder.used == 0:
        raise InputError(f"{dl.name}: no usable occurrence rows (read {builder.rows}; skipped "
                         + ", ".join(f"{k} {v}" for k, v in builder.skipped.items() if v) + ")")
    table, stats = builder.table(path.name)
    with atomic_file(out) as fh:
        pq.write_table(table, fh, compression="zstd")
    log.info("%s: %d taxa in %d countries and %d cells from %d rows -> %s", dl.name, stats["taxa"],
             stats["countries"], stats["cells"], stats["rows"], out)
    return stats


def _progress(name: str, enabled: bool | None):
    import sys

    from tqdm import tqdm

    disable = not sys.stderr.isatty() if enabled is None else not enabled
    return tqdm(desc=f"reading {Path(name).name}", unit=" rows", unit_scale=True, disable=disable)

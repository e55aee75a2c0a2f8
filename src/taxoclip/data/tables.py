"""Folders of images described by a table, and bare image folders, as build sources.

A table (CSV, TSV or Parquet) has one row per image:

- the image: `filepath` (relative to the table's folder, or absolute) or `url`;
- the taxonomy, one of: the rank columns (`kingdom` … `genus`, `species` as binomial or
  `specificEpithet`), a `scientific_name` (ranks then come from a backbone), or a label column
  (`--label-column`, default `label`) joined to a taxa table (`--taxa FILE`, same label column
  plus rank columns);
- optional: `source_id` (the occurrence; default the file path), `data_source`, `common_name`,
  `license`, `traits` (a JSON object), `taxonRank`.

Tables are streamed (csv module, pyarrow batches), so their size does not matter. A folder of
images without a table yields records whose scientific name is the sub-folder name
(`root/Puma concolor/1.jpg`), or none at the top level.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import InputError
from ..io.images import IMAGE_EXTENSIONS
from ..taxonomy import RANKS, Taxon
from .records import Record
from .sources import SourceOptions, register_source

__all__ = ["TABLE_EXTENSIONS", "read_table_rows", "table_columns", "find_table", "read_table", "read_image_folder"]

TABLE_EXTENSIONS = (".csv", ".tsv", ".parquet", ".pq")
FILE_COLUMNS = ("filepath", "file_path", "path", "file_name", "filename", "image", "image_path")
URL_COLUMNS = ("url", "image_url", "identifier", "accessuri")
ID_COLUMNS = ("source_id", "occurrence_id", "occurrenceid", "gbifid", "id")
TAXON_COLUMNS = set(RANKS) | {"species_epithet", "specificepithet", "scientific_name", "scientificname", "taxon",
                              "lineage"}
KNOWN_RANKS = set(RANKS) | {"subspecies", "variety", "form", "infraspecificname", ""}


def _norm(col: str) -> str:
    return str(col).strip().lower().replace(" ", "_")


def _squash(col: str) -> str:
    return _norm(col).replace("_", "")


# ----- reading tables ------------------------------------------------------------------------
def table_columns(path: Path) -> list[str]:
    """The column names of a table, read without loading its rows."""
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except Exception as e:  # pyarrow raises several types for a bad file
            raise InputError(f"{path}: unreadable Parquet file ({e})") from None
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f, dialect=_dialect(path)), None)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path}: unreadable table ({e})") from None
    return [h.strip() for h in header] if header else []


def _dialect(path: Path) -> str:
    return "excel-tab" if path.suffix.lower() == ".tsv" else "excel"


def read_table_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a CSV/TSV/Parquet table as dicts, streamed."""
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
            for batch in pf.iter_batches(batch_size=4096):
                yield from batch.to_pylist()
        except OSError as e:
            raise InputError(f"{path}: unreadable Parquet file ({e})") from None
        return
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            for row in csv.DictReader(f, dialect=_dialect(path)):
                yield {(k or "").strip(): v for k, v in row.items()}
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path}: unreadable table ({e})") from None


# ----- detecting -----------------------------------------------------------------------------
def _has_image_column(columns: list[str]) -> bool:
    names = {_norm(c) for c in columns}
    return any(c in names for c in FILE_COLUMNS + URL_COLUMNS)


def find_table(folder: Path) -> Path | None:
    """The one table in a folder that lists images; an error if several do."""
    tables = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in TABLE_EXTENSIONS
                    and not p.name.startswith("."))
    listing = []
    for t in tables:
        try:
            if _has_image_column(table_columns(t)):
                listing.append(t)
        except InputError:
            continue
    if len(listing) > 1:
        raise InputError(f"{folder}: several tables list images ({', '.join(t.name for t in listing)}); "
                         "give the table file itself as the input")
    return listing[0] if listing else None


def is_table(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() in TABLE_EXTENSIONS
    return path.is_dir() and find_table(path) is not None


def _walk_images(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                yield Path(root) / name


def is_image_folder(path: Path) -> bool:
    return path.is_dir() and next(_walk_images(path), None) is not None


# ----- the table source ----------------------------------------------------------------------
class _Columns:
    """Which column plays which role in one table, checked once against its header."""

    def __init__(self, path: Path, columns: list[str], options: SourceOptions):
        by_norm = {_norm(c): c for c in columns}
        by_squash = {_squash(c): c for c in columns}
        pick = lambda names: next((by_norm[n] for n in names if n in by_norm), None)  # noqa: E731
        self.file = pick(FILE_COLUMNS)
        self.url = pick(URL_COLUMNS)
        if self.file is None and self.url is None:
            raise InputError(f"{path}: no image column: expected one of {', '.join(FILE_COLUMNS + URL_COLUMNS)} "
                             f"(columns: {', '.join(columns)})")
        self.source_id = pick(ID_COLUMNS)
        self.data_source = pick(("data_source",))
        self.license = pick(("license", "license_note", "rights"))
        self.traits = pick(("traits",))
        self.rank = by_squash.get("taxonrank")
        self.taxon = [c for c in columns if _squash(c) in {_squash(t) for t in TAXON_COLUMNS}]
        label = options.label_column
        self.label = by_norm.get(_norm(label)) if label else None
        self.taxa: dict[str, dict] | None = None
        if options.taxa:
            if self.label is None:
                raise InputError(f"{path}: --taxa given but the table has no {label!r} column to join on "
                                 f"(columns: {', '.join(columns)}; see --label-column)")
            self.taxa = _load_taxa(Path(options.taxa), label)
        elif not self.taxon:
            hint = (f"; it has a {self.label!r} column: give a taxa table with --taxa to join it"
                    if self.label else "")
            raise InputError(f"{path}: no taxonomy columns: expected the ranks ({', '.join(RANKS)}), "
                             f"a scientific_name, or a label column joined to --taxa{hint} "
                             f"(columns: {', '.join(columns)})")


def _load_taxa(path: Path, label: str) -> dict[str, dict]:
    if not path.is_file():
        raise InputError(f"{path}: taxa table not found")
    columns = table_columns(path)
    key = next((c for c in columns if _norm(c) == _norm(label)), None)
    if key is None:
        raise InputError(f"{path}: taxa table has no {label!r} column (columns: {', '.join(columns)})")
    taxa: dict[str, dict] = {}
    for row in read_table_rows(path):
        value = str(row.get(key) or "").strip()
        if value in taxa and taxa[value] != row:
            raise InputError(f"{path}: label {value!r} appears twice with different taxonomy")
        taxa[value] = row
    return taxa


def _clean(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value).strip()


@register_source("table", is_table, "a CSV/TSV/Parquet table with filepath or url, or a folder holding one",
                 priority=30)
def read_table(path: Path, options: SourceOptions) -> Iterator[Record]:
    table = path if path.is_file() else find_table(path)
    assert table is not None
    cols = _Columns(table, table_columns(table), options)
    base = table.parent
    default_source = base.name or table.stem
    for n, row in enumerate(read_table_rows(table), start=2 if table.suffix.lower() in (".csv", ".tsv") else 1):
        yield _row_record(row, n, table, base, cols, default_source)


def _row_record(row: dict, n: int, table: Path, base: Path, cols: _Columns, default_source: str) -> Record:
    where = f"{table}:{n}"
    meta: dict = {"table_row": n}
    file = _clean(row.get(cols.file)) if cols.file else ""
    url = _clean(row.get(cols.url)) if cols.url else ""
    path = None
    if file:
        path = file if os.path.isabs(file) else str(base / file)
    taxon, name = _row_taxon(row, cols, meta)
    traits = {}
    if cols.traits and _clean(row.get(cols.traits)):
        try:
            traits = json.loads(row[cols.traits]) if isinstance(row[cols.traits], str) else dict(row[cols.traits])
        except (ValueError, TypeError) as e:
            meta["traits_error"] = f"traits column is not a JSON object ({e})"
    record = Record(
        source_id=_clean(row.get(cols.source_id)) if cols.source_id else "",
        taxon=taxon,
        data_source=(_clean(row.get(cols.data_source)) if cols.data_source else "") or default_source,
        origin=path or url or where,
        url=None if path else (url or None),
        path=path,
        license=_clean(row.get(cols.license)) if cols.license else "",
        traits=traits if isinstance(traits, dict) else {},
        meta=meta,
        scientific_name=name,
    )
    record.source_id = record.source_id or file or url or where
    if not path and not url:
        record.error = f"{where}: no file path or URL in this row"
    return record


def _row_taxon(row: dict, cols: _Columns, meta: dict) -> tuple[Taxon, str]:
    fields = {c: row.get(c) for c in cols.taxon}
    for c in ("common_name", "common", "vernacularName", "vernacular_name"):
        if c in row:
            fields[c] = row[c]
    if cols.rank:
        rank = _clean(row.get(cols.rank))
        fields["taxonRank"] = rank
        if rank.lower() not in KNOWN_RANKS:
            meta["unresolved_reason"] = f"unknown rank {rank!r} in {cols.rank} column"
    if cols.taxa is not None:
        label = _clean(row.get(cols.label))
        meta["label"] = label
        joined = cols.taxa.get(label)
        if joined is None:
            meta["unresolved_reason"] = f"label {label!r} not in the taxa table"
            return Taxon(), ""
        fields = {**{k: v for k, v in joined.items() if k != cols.label}, **{k: v for k, v in fields.items() if _clean(v)}}
    name = next((_clean(v) for k, v in fields.items() if _squash(k) == "scientificname" and _clean(v)), "")
    try:
        return Taxon.from_record(fields), name
    except ValueError as e:
        meta["taxonomy_error"] = str(e)
        return Taxon(), name


# ----- bare image folders --------------------------------------------------------------------
@register_source("images", is_image_folder, "a folder of images (sub-folder names read as scientific names)",
                 priority=40)
def read_image_folder(path: Path, options: SourceOptions) -> Iterator[Record]:
    for file in _walk_images(path):
        rel = file.relative_to(path)
        name = " ".join(rel.parent.as_posix().split("/")[-1].replace("_", " ").split()) if rel.parent.parts else ""
        try:
            taxon = Taxon.from_record({"scientificName": name}) if name else Taxon()
        except ValueError:
            taxon = Taxon()
        yield Record(source_id=rel.as_posix(), taxon=taxon, data_source=path.name or "images",
                     origin=str(file), path=str(file), scientific_name=name)

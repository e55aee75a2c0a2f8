"""Darwin Core Archives (GBIF downloads, iNaturalist exports) as a stream of image Records.

An archive is a zip or folder with `meta.xml` describing an Occurrence core (one row per
observation) and extensions; we use a Multimedia (GBIF) or Audubon Core extension, joined to
the core by id, and yield one `Record` per still image, with the image URL to fetch.

The join never holds a whole file in memory: the multimedia extension (narrow rows, and the
only side we need random access to) is first copied into a temporary sqlite table indexed by
core id, keeping just the dozen columns a record needs; then the core, the wide side with
hundreds of columns and possibly hundreds of millions of rows, is streamed once and each
occurrence looks its images up. Memory stays constant; disk use is about the size of the
kept multimedia columns. (A merge join would avoid the copy but needs both files sorted by
id, which the standard does not promise.) Archives without a media extension fall back to the
core's `associatedMedia` column.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import re
import sqlite3
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Iterator

from ..errors import InputError
from ..taxonomy import Taxon
from .records import Record

__all__ = ["read_dwca", "DwcaStats", "MULTIMEDIA_ROW_TYPES", "OCCURRENCE_ROW_TYPE"]

log = logging.getLogger(__name__)

OCCURRENCE_ROW_TYPE = "http://rs.tdwg.org/dwc/terms/Occurrence"
MULTIMEDIA_ROW_TYPES = (
    "http://rs.gbif.org/terms/1.0/Multimedia",  # GBIF Simple Multimedia
    "http://rs.tdwg.org/ac/terms/Multimedia",  # Audubon Core
)
_NS = "{http://rs.tdwg.org/dwc/text/}"

# Media terms kept per image (short names; Audubon Core synonyms are folded in `_media`).
_MEDIA_TERMS = ("identifier", "accessURI", "type", "format", "license", "UsageTerms", "WebStatement",
                "rights", "rightsHolder", "Owner", "creator", "references", "furtherInformationURL",
                "title", "publisher", "created", "CreateDate")
# Occurrence terms copied into Record.meta when present.
_OCCURRENCE_META = ("occurrenceID", "gbifID", "catalogNumber", "institutionCode", "datasetKey", "datasetName",
                    "basisOfRecord", "eventDate", "countryCode", "stateProvince", "decimalLatitude",
                    "decimalLongitude", "recordedBy", "identifiedBy", "taxonRank", "taxonKey", "taxonID")
# What Taxon.from_record reads, and everything else a record takes from the core.
_TAXON_TERMS = ("kingdom", "phylum", "class", "order", "family", "genus", "specificEpithet", "species",
                "scientificName", "acceptedScientificName", "taxonRank", "vernacularName")
_CORE_TERMS = frozenset(_TAXON_TERMS + _OCCURRENCE_META + (
    "license", "rights", "rightsHolder", "associatedMedia", "verbatimScientificName"))
_STILL_TYPES = {"stillimage", "image", "photograph", "still image"}
_URL = re.compile(r"https?://[^\s|,;\"'<>]+", re.I)


@dataclass
class DwcaStats:
    """What `read_dwca` read and why rows were not turned into Records (pass one in to fill)."""

    occurrences: int = 0
    images: int = 0  # Records yielded
    occurrences_without_images: int = 0
    non_image_media: int = 0  # sound, video, text … skipped
    media_without_url: int = 0
    rows_without_id: int = 0
    taxonomy_conflicts: int = 0  # yielded with an empty taxon and `meta["taxonomy_error"]`


def read_dwca(path: str | Path, *, data_source: str | None = None, stats: DwcaStats | None = None,
              workdir: str | Path | None = None) -> Iterator[Record]:
    """One Record per still image of a Darwin Core Archive (zip or folder), in core order.

    `source_id` is the occurrence's `occurrenceID` (shared by the same observation in a GBIF
    download and in the publisher's own export, so splits stay leak-free across archives),
    else `gbifID`, else the core id. `data_source` defaults to "gbif" for GBIF downloads,
    "inaturalist" for iNaturalist exports, else the dataset title from the EML metadata.
    `workdir` holds the temporary media index (default: the system temp directory).
    """
    stats = stats if stats is not None else DwcaStats()
    archive = _Archive(Path(path))
    try:
        core, media = archive.tables()
        source = data_source or archive.data_source(core)
        core.keep(_CORE_TERMS)  # a GBIF core has ~250 columns; a record needs ~40
        if media is not None:
            media.keep(_MEDIA_TERMS)
        with tempfile.TemporaryDirectory(prefix="taxoclip-dwca-", dir=workdir) as tmp:
            index = _MediaIndex(Path(tmp) / "media.sqlite")
            try:
                if media is not None:
                    index.load(archive, media, stats)
                for occ in core.rows(archive, stats):
                    stats.occurrences += 1
                    images = index.get(occ["\0id"]) if media is not None else _associated_media(occ)
                    if not images:
                        stats.occurrences_without_images += 1
                        continue
                    for image in images:
                        stats.images += 1
                        yield _record(occ, image, source, stats)
            finally:
                index.close()
    finally:
        archive.close()
    log.info("%s: %d images from %d occurrences (%d without images, %d non-image media skipped)",
             path, stats.images, stats.occurrences, stats.occurrences_without_images, stats.non_image_media)


# ----- records ------------------------------------------------------------------------------
def _record(occ: dict[str, str], image: dict[str, str], source: str, stats: DwcaStats) -> Record:
    meta = {k: occ[k] for k in _OCCURRENCE_META if occ.get(k)}
    for key in ("rightsHolder", "creator", "references", "title", "publisher", "created"):
        if image.get(key):
            meta[key] = image[key]
    if "rightsHolder" not in meta and occ.get("rightsHolder"):
        meta["rightsHolder"] = occ["rightsHolder"]
    try:
        taxon = _taxon(tuple(occ.get(k, "") for k in _TAXON_TERMS))
    except ValueError as e:  # e.g. a binomial outside the genus column: leave it to alignment
        stats.taxonomy_conflicts += 1
        meta["taxonomy_error"] = str(e)
        taxon = Taxon()
    source_id = occ.get("occurrenceID") or occ.get("gbifID") or occ["\0id"]
    name = occ.get("scientificName") or occ.get("acceptedScientificName") or occ.get("verbatimScientificName", "")
    return Record(source_id=source_id, taxon=taxon, data_source=source, origin=image["url"], url=image["url"],
                  license=image.get("license") or occ.get("license") or occ.get("rights", ""),
                  meta=meta, scientific_name=name)


@lru_cache(maxsize=1024)
def _taxon(values: tuple[str, ...]) -> Taxon:
    """`Taxon.from_record` on the taxonomy terms, cached: an export repeats each species a lot.

    The most frequent species stay cached; 1,024 entries hold ~1 MB (65,536 could reach ~80 MB
    on an export of many species: memory must not grow with the input)."""
    terms = dict(zip(_TAXON_TERMS, values))
    for rank in ("kingdom", "phylum", "class", "order", "family", "genus"):
        if terms[rank].lower() == "incertae sedis":  # GBIF's placeholder for "not placed"
            terms[rank] = ""
    return Taxon.from_record(terms)


def _media(row: dict[str, str], stats: DwcaStats) -> dict[str, str] | None:
    """The kept fields of one media row with Audubon Core folded onto GBIF's names; None to skip."""
    kind = row.get("type", "").strip().lower().rstrip("/").rsplit("/", 1)[-1]
    fmt = row.get("format", "").strip().lower()
    if (kind and kind not in _STILL_TYPES) or (fmt and "/" in fmt and not fmt.startswith("image/")):
        stats.non_image_media += 1
        return None
    url = row.get("accessURI") or row.get("identifier", "")
    if not url.lower().startswith(("http://", "https://")):
        stats.media_without_url += 1
        return None
    out = {"url": url.strip(), "license": row.get("license") or row.get("UsageTerms") or row.get("WebStatement")
           or row.get("rights", ""), "rightsHolder": row.get("rightsHolder") or row.get("Owner", ""),
           "references": row.get("references") or row.get("furtherInformationURL", ""),
           "created": row.get("created") or row.get("CreateDate", "")}
    for key in ("creator", "title", "publisher"):
        out[key] = row.get(key, "")
    return {k: v for k, v in out.items() if v}


def _associated_media(occ: dict[str, str]) -> list[dict[str, str]]:
    """Images named in the core's `associatedMedia` (archives without a media extension)."""
    return [{"url": u} for u in dict.fromkeys(_URL.findall(occ.get("associatedMedia", "")))]


class _MediaIndex:
    """Still-image rows of the media extension in a temporary sqlite table, looked up by core id."""

    def __init__(self, path: Path):
        # The reader may be advanced from different threads (fetch_all reads its input off the
        # event loop), one at a time: that is safe for sqlite, so allow it.
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE media (coreid TEXT NOT NULL, item TEXT NOT NULL)")

    def load(self, archive: "_Archive", table: "_Table", stats: DwcaStats) -> None:
        self.db.execute("BEGIN")
        batch: list[tuple[str, str]] = []
        for row in table.rows(archive, stats):
            item = _media(row, stats)
            if item is None:
                continue
            batch.append((row["\0id"], json.dumps(item, separators=(",", ":"))))
            if len(batch) >= 10_000:
                self.db.executemany("INSERT INTO media VALUES (?, ?)", batch)
                batch.clear()
        self.db.executemany("INSERT INTO media VALUES (?, ?)", batch)
        self.db.execute("CREATE INDEX media_coreid ON media (coreid)")
        self.db.execute("COMMIT")

    def get(self, core_id: str) -> list[dict[str, str]]:
        rows = self.db.execute("SELECT item FROM media WHERE coreid = ? ORDER BY rowid", (core_id,))
        return [json.loads(item) for (item,) in rows]

    def close(self) -> None:
        self.db.close()


# ----- meta.xml and the data files ----------------------------------------------------------------
def _term(uri: str) -> str:
    """A term's short name: "http://rs.tdwg.org/dwc/terms/scientificName" -> "scientificName"."""
    return re.split(r"[/#:]", uri.strip().rstrip("/"))[-1]


def _unescape(value: str) -> str:
    return value.replace("\\t", "\t").replace("\\n", "\n").replace("\\r", "\r").replace('\\"', '"')


@dataclass
class _Table:
    """One data file as meta.xml describes it (or as its header line does, without meta.xml)."""

    location: str
    row_type: str
    id_index: int | None
    fields: list[tuple[str, int | None, str]]  # (short term, column or None, default)
    delimiter: str = ","
    quotechar: str = '"'
    encoding: str = "utf-8"
    header_lines: int = 0

    def keep(self, terms: frozenset[str] | tuple[str, ...]) -> None:
        """Read only these terms (the id column is always read)."""
        self.fields = [f for f in self.fields if f[0] in terms]

    def rows(self, archive: "_Archive", stats: DwcaStats) -> Iterator[dict[str, str]]:
        """Each data row as {short term: value}, plus the row's id under "\\0id"."""
        name = archive.describe(self.location)
        csv.field_size_limit(max(csv.field_size_limit(), 1 << 26))  # remarks fields can be huge
        opts = dict(delimiter=self.delimiter, quoting=csv.QUOTE_NONE) if not self.quotechar else \
            dict(delimiter=self.delimiter, quotechar=self.quotechar, doublequote=True)
        with archive.open_text(self.location, self.encoding) as fh:
            reader = csv.reader(fh, strict=False, **opts)
            line = 0
            try:
                for _ in range(max(0, self.header_lines)):
                    next(reader, None)
                fields, id_index = self.fields, self.id_index
                for values in reader:
                    line = reader.line_num
                    if not values or values == [""]:
                        continue
                    n = len(values)
                    row = {}
                    for term, index, default in fields:
                        value = values[index].strip() if index is not None and index < n else ""
                        row[term] = value or default
                    row_id = values[id_index].strip() if id_index is not None and id_index < n else ""
                    if not row_id:
                        stats.rows_without_id += 1
                        continue
                    row["\0id"] = row_id
                    yield row
            except csv.Error as e:
                raise InputError(f"{name}: malformed row near line {line + 1}: {e}") from None
            except UnicodeDecodeError as e:
                raise InputError(f"{name}: not {self.encoding} text ({e.reason} at byte {e.start})") from None


class _Archive:
    """A zip or a folder holding meta.xml and the data files it names."""

    def __init__(self, path: Path):
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        self.prefix = ""
        if path.is_dir():
            return
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
        if not zipfile.is_zipfile(path):
            raise InputError(f"{path}: not a Darwin Core Archive (expected a .zip or a folder with meta.xml)")
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise InputError(f"{path}: unreadable zip ({e})") from None
        # Some archives wrap everything in one top folder.
        metas = [n for n in self.zip.namelist() if n.rsplit("/", 1)[-1].lower() == "meta.xml" and n.count("/") <= 1]
        if metas:
            self.prefix = metas[0][: -len("meta.xml")]

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()

    def describe(self, name: str) -> str:
        return f"{self.path}/{self.prefix}{name}" if self.zip is not None else str(self.path / name)

    def _member(self, name: str) -> str | None:
        """The real name of a file in the archive, matched case-insensitively as a fallback."""
        if self.zip is None:
            p = self.path / name
            if p.is_file():
                return str(p)
            lower = {c.name.lower(): c for c in self.path.iterdir()} if self.path.is_dir() else {}
            hit = lower.get(name.lower())
            return str(hit) if hit is not None and hit.is_file() else None
        names = self.zip.namelist()
        full = self.prefix + name
        if full in names:
            return full
        lower = {n.lower(): n for n in names}
        return lower.get(full.lower())

    def open_binary(self, name: str) -> IO[bytes]:
        member = self._member(name)
        if member is None:
            raise InputError(f"{self.describe(name)}: named in the archive but missing")
        return self.zip.open(member) if self.zip is not None else open(member, "rb")

    def open_text(self, name: str, encoding: str) -> IO[str]:
        enc = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
        try:
            "".encode(enc)
        except LookupError:
            raise InputError(f"{self.describe(name)}: unknown encoding {encoding!r} in meta.xml") from None
        return io.TextIOWrapper(self.open_binary(name), encoding=enc, newline="")

    # ----- meta.xml ---------------------------------------------------------------------------
    def tables(self) -> tuple[_Table, _Table | None]:
        """The Occurrence core and the first still-image media extension (or None)."""
        if self._member("meta.xml") is None:
            return self._tables_from_headers()
        where = self.describe("meta.xml")
        with self.open_binary("meta.xml") as fh:
            try:
                root = ET.parse(fh).getroot()
            except ET.ParseError as e:
                raise InputError(f"{where}: not valid XML ({e})") from None
        self.metadata = root.get("metadata", "")
        core_el = _find(root, "core")
        if core_el is None:
            raise InputError(f"{where}: no <core> element")
        core = _table(core_el, "id", where)
        if core.row_type.lower() != OCCURRENCE_ROW_TYPE.lower():
            raise InputError(f"{where}: the core is {core.row_type or 'untyped'}; only Occurrence-core "
                             f"archives are supported (rowType {OCCURRENCE_ROW_TYPE})")
        media = None
        for ext in _findall(root, "extension"):
            if ext.get("rowType", "").strip().lower() in {t.lower() for t in MULTIMEDIA_ROW_TYPES}:
                media = _table(ext, "coreid", where)
                break
        return core, media

    def _tables_from_headers(self) -> tuple[_Table, _Table | None]:
        """No meta.xml: GBIF-style occurrence.txt (+ multimedia.txt) whose header lines name the terms."""
        def table(stem: str, row_type: str) -> _Table | None:
            for ext, delim, quote in ((".txt", "\t", ""), (".csv", ",", '"')):
                if self._member(stem + ext) is None:
                    continue
                opts = dict(quoting=csv.QUOTE_NONE) if not quote else dict(quotechar=quote)
                with self.open_text(stem + ext, "utf-8") as fh:
                    header = next(csv.reader(fh, delimiter=delim, **opts), [])
                fields = [(_term(h), i, "") for i, h in enumerate(header) if h.strip()]
                if not fields:
                    raise InputError(f"{self.describe(stem + ext)}: empty header line (and no meta.xml)")
                return _Table(stem + ext, row_type, 0, fields, delimiter=delim, quotechar=quote, header_lines=1)
            return None
        core = table("occurrence", OCCURRENCE_ROW_TYPE)
        if core is None:
            raise InputError(f"{self.path}: not a Darwin Core Archive: no meta.xml and no occurrence.txt")
        return core, table("multimedia", MULTIMEDIA_ROW_TYPES[0])

    def data_source(self, core: _Table) -> str:
        """"gbif" for a GBIF download, "inaturalist" for an iNaturalist export, else the dataset title."""
        terms = {t for t, _, _ in core.fields}
        if "gbifID" in terms:
            return "gbif"
        title = self._eml_title()
        if "inaturalist" in title.lower() or "inaturalist" in self.path.name.lower():
            return "inaturalist"
        return title or self.path.stem

    def _eml_title(self) -> str:
        name = getattr(self, "metadata", "") or "eml.xml"
        if self._member(name) is None:
            return ""
        try:
            with self.open_binary(name) as fh:
                for _, el in ET.iterparse(fh):
                    if el.tag.rsplit("}", 1)[-1] == "title" and (el.text or "").strip():
                        return " ".join(el.text.split())
        except ET.ParseError:
            log.warning("%s: unreadable EML metadata; using the archive name", self.describe(name))
        return ""


def _find(el: ET.Element, tag: str) -> ET.Element | None:
    found = el.find(_NS + tag)
    return found if found is not None else el.find(tag)


def _findall(el: ET.Element, tag: str) -> list[ET.Element]:
    return el.findall(_NS + tag) + el.findall(tag)


def _table(el: ET.Element, id_tag: str, where: str) -> _Table:
    kind = el.tag.rsplit("}", 1)[-1]
    files = _find(el, "files")
    location = _find(files, "location") if files is not None else None
    if location is None or not (location.text or "").strip():
        raise InputError(f"{where}: <{kind}> has no <files><location>")
    id_el = _find(el, id_tag)
    try:
        id_index = int(id_el.get("index")) if id_el is not None else None
        fields = []
        for f in _findall(el, "field"):
            term = f.get("term", "")
            if not term:
                raise InputError(f"{where}: a <field> of <{kind}> has no term")
            index = f.get("index")
            fields.append((_term(term), int(index) if index not in (None, "") else None, f.get("default", "")))
        header_lines = int(el.get("ignoreHeaderLines", "0") or 0)
    except ValueError as e:
        raise InputError(f"{where}: bad index in <{kind}> ({e})") from None
    if id_index is None:
        raise InputError(f"{where}: <{kind}> has no <{id_tag} index=…>: cannot join core and extension")
    delimiter = _unescape(el.get("fieldsTerminatedBy", ","))
    if len(delimiter) != 1:
        raise InputError(f"{where}: fieldsTerminatedBy must be one character, got {delimiter!r}")
    quote = _unescape(el.get("fieldsEnclosedBy", '"'))
    return _Table(location.text.strip(), el.get("rowType", "").strip(), id_index, fields, delimiter=delimiter,
                  quotechar=quote[:1], encoding=el.get("encoding", "UTF-8") or "UTF-8", header_lines=header_lines)


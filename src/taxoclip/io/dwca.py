"""Darwin Core Archives: opening one, reading `meta.xml`, and streaming a data file's rows.

This is the archive layer only: a zip or folder, the table descriptions its `meta.xml` gives
(or the header lines of a GBIF download without one), and each data row as {short term: value}.
What the rows mean is up to the task reading them: the dataset builder (`taxoclip.data.dwca`)
joins images to occurrences, the location prior (`taxoclip.geo.presence`) tallies places. It
lives in `taxoclip.io`, the layer every task may use, so that both share one reader of the
format and its quirks without one task importing another listed after it.

`meta.xml` and the EML metadata are parsed with defusedxml: an archive is downloaded input,
and an entity-expansion bomb or an external entity must be refused, not expanded or fetched.
"""
from __future__ import annotations

import csv
import io
import logging
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Iterator, Protocol

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, iterparse, parse

from ..errors import InputError

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element

__all__ = ["Archive", "DataTable", "RowCounts", "short_term", "OCCURRENCE_ROW_TYPE", "MULTIMEDIA_ROW_TYPES",
           "DWC_TEXT_NS"]

log = logging.getLogger(__name__)

OCCURRENCE_ROW_TYPE = "http://rs.tdwg.org/dwc/terms/Occurrence"
MULTIMEDIA_ROW_TYPES = (
    "http://rs.gbif.org/terms/1.0/Multimedia",  # GBIF Simple Multimedia
    "http://rs.tdwg.org/ac/terms/Multimedia",  # Audubon Core
)
DWC_TEXT_NS = "http://rs.tdwg.org/dwc/text/"  # the namespace of meta.xml
_NS = "{" + DWC_TEXT_NS + "}"


def short_term(uri: str) -> str:
    """A term's short name: "http://rs.tdwg.org/dwc/terms/scientificName" -> "scientificName"."""
    return re.split(r"[/#:]", uri.strip().rstrip("/"))[-1]


def _unescape(value: str) -> str:
    return value.replace("\\t", "\t").replace("\\n", "\n").replace("\\r", "\r").replace('\\"', '"')


class RowCounts(Protocol):
    """Where `DataTable.rows` counts the rows it drops (a task's stats object fits as it is)."""

    rows_without_id: int


@dataclass
class DataTable:
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

    def rows(self, archive: Archive, counts: RowCounts | None = None) -> Iterator[dict[str, str]]:
        """Each data row as {short term: value}, plus the row's id under "\\0id".

        Rows without an id are skipped (they cannot be joined) and counted in `counts`."""
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
                        if counts is not None:
                            counts.rows_without_id += 1
                        continue
                    row["\0id"] = row_id
                    yield row
            except csv.Error as e:
                raise InputError(f"{name}: malformed row near line {line + 1}: {e}") from None
            except UnicodeDecodeError as e:
                raise InputError(f"{name}: not {self.encoding} text ({e.reason} at byte {e.start})") from None


class Archive:
    """A zip or a folder holding meta.xml and the data files it names."""

    def __init__(self, path: str | Path):
        self.path = path = Path(path)
        self.zip: zipfile.ZipFile | None = None
        self.prefix = ""
        self.metadata = ""  # the EML file meta.xml names, once `tables()` has read it
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

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self, name: str) -> str:
        """How to name a member in a message: the archive's path, then the member's."""
        return f"{self.path}/{self.prefix}{name}" if self.zip is not None else str(self.path / name)

    def _member(self, name: str) -> str | None:
        """The real name of a file in the archive, matched case-insensitively as a fallback."""
        if self.zip is None:
            p = self.path / name
            root = self.path.resolve()
            if root not in p.resolve().parents:  # meta.xml names a file outside the archive's folder
                raise InputError(f"{self.describe(name)}: refused: the file lies outside the archive folder")
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
    def tables(self) -> tuple[DataTable, DataTable | None]:
        """The Occurrence core and the first still-image media extension (or None)."""
        if self._member("meta.xml") is None:
            return self._tables_from_headers()
        where = self.describe("meta.xml")
        with self.open_binary("meta.xml") as fh:
            try:
                root = parse(fh).getroot()
            except ParseError as e:
                raise InputError(f"{where}: not valid XML ({e})") from None
            except DefusedXmlException as e:
                raise InputError(f"{where}: refused: XML entity declarations and external references are not "
                                 f"allowed ({type(e).__name__})") from None
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

    def _tables_from_headers(self) -> tuple[DataTable, DataTable | None]:
        """No meta.xml: GBIF-style occurrence.txt (+ multimedia.txt) whose header lines name the terms."""
        def table(stem: str, row_type: str) -> DataTable | None:
            for ext, delim, quote in ((".txt", "\t", ""), (".csv", ",", '"')):
                if self._member(stem + ext) is None:
                    continue
                opts = dict(quoting=csv.QUOTE_NONE) if not quote else dict(quotechar=quote)
                with self.open_text(stem + ext, "utf-8") as fh:
                    header = next(csv.reader(fh, delimiter=delim, **opts), [])
                fields = [(short_term(h), i, "") for i, h in enumerate(header) if h.strip()]
                if not fields:
                    raise InputError(f"{self.describe(stem + ext)}: empty header line (and no meta.xml)")
                return DataTable(stem + ext, row_type, 0, fields, delimiter=delim, quotechar=quote, header_lines=1)
            return None
        core = table("occurrence", OCCURRENCE_ROW_TYPE)
        if core is None:
            raise InputError(f"{self.path}: not a Darwin Core Archive: no meta.xml and no occurrence.txt")
        return core, table("multimedia", MULTIMEDIA_ROW_TYPES[0])

    # ----- EML ----------------------------------------------------------------------------------
    def title(self) -> str:
        """The dataset title from the EML metadata, or "" (none, or unreadable: it is only a label)."""
        name = self.metadata or "eml.xml"
        if self._member(name) is None:
            return ""
        try:
            with self.open_binary(name) as fh:
                for _, el in iterparse(fh):
                    if el.tag.rsplit("}", 1)[-1] == "title" and (el.text or "").strip():
                        return " ".join(el.text.split())
        except ParseError:
            log.warning("%s: unreadable EML metadata; using the archive name", self.describe(name))
        except DefusedXmlException as e:
            log.warning("%s: EML metadata refused (%s); using the archive name", self.describe(name),
                        type(e).__name__)
        return ""


def _find(el: Element, tag: str) -> Element | None:
    found = el.find(_NS + tag)
    return found if found is not None else el.find(tag)


def _findall(el: Element, tag: str) -> list[Element]:
    return el.findall(_NS + tag) + el.findall(tag)


def _count(text: str | None, what: str, where: str) -> int | None:
    """A column index or line count of meta.xml (None when absent or empty)."""
    if text is None or not text.strip():
        return None
    try:
        value = int(text)
    except ValueError:
        raise InputError(f"{where}: {what} is {text!r}, not a whole number") from None
    if value < 0:
        raise InputError(f"{where}: {what} is {value}, below 0")
    return value


def _table(el: Element, id_tag: str, where: str) -> DataTable:
    kind = el.tag.rsplit("}", 1)[-1]
    files = _find(el, "files")
    location = _find(files, "location") if files is not None else None
    if location is None or not (location.text or "").strip():
        raise InputError(f"{where}: <{kind}> has no <files><location>")
    id_el = _find(el, id_tag)
    id_index = _count(id_el.get("index"), f"<{id_tag} index> of <{kind}>", where) if id_el is not None else None
    fields = []
    for f in _findall(el, "field"):
        term = f.get("term", "")
        if not term:
            raise InputError(f"{where}: a <field> of <{kind}> has no term")
        fields.append((short_term(term), _count(f.get("index"), f"<field index> of {term}", where),
                       f.get("default", "")))
    header_lines = _count(el.get("ignoreHeaderLines"), f"ignoreHeaderLines of <{kind}>", where) or 0
    if id_index is None:
        raise InputError(f"{where}: <{kind}> has no <{id_tag} index=…>: cannot join core and extension")
    delimiter = _unescape(el.get("fieldsTerminatedBy", ","))
    if len(delimiter) != 1:
        raise InputError(f"{where}: fieldsTerminatedBy must be one character, got {delimiter!r}")
    quote = _unescape(el.get("fieldsEnclosedBy", '"'))
    return DataTable(location.text.strip(), el.get("rowType", "").strip(), id_index, fields, delimiter=delimiter,
                     quotechar=quote[:1], encoding=el.get("encoding", "UTF-8") or "UTF-8", header_lines=header_lines)

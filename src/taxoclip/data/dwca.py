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

Opening the archive, reading meta.xml and streaming a data file's rows is the archive layer in
`taxoclip.io.dwca` (shared with `taxoclip.geo`); this module turns those rows into Records.
"""
from __future__ import annotations

import json
import logging
import re
import sqlite3
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from ..io.dwca import MULTIMEDIA_ROW_TYPES, OCCURRENCE_ROW_TYPE, Archive, DataTable
from ..taxonomy import Taxon
from .records import Record

__all__ = ["read_dwca", "DwcaStats", "MULTIMEDIA_ROW_TYPES", "OCCURRENCE_ROW_TYPE"]

log = logging.getLogger(__name__)

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
    archive = Archive(Path(path))
    try:
        core, media = archive.tables()
        source = data_source or _data_source(archive, core)
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


def _data_source(archive: Archive, core: DataTable) -> str:
    """"gbif" for a GBIF download, "inaturalist" for an iNaturalist export, else the dataset title."""
    if "gbifID" in {t for t, _, _ in core.fields}:
        return "gbif"
    title = archive.title()
    if "inaturalist" in title.lower() or "inaturalist" in archive.path.name.lower():
        return "inaturalist"
    return title or archive.path.stem


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

    def load(self, archive: Archive, table: DataTable, stats: DwcaStats) -> None:
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

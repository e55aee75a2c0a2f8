"""Darwin Core occurrences from camera-trap decisions: a CSV, or a Darwin Core Archive for GBIF.

One occurrence per frame decision (or per event, when frames have events), for taxa only:
frames decided blank, human or vehicle are skipped, and so are failures. Where one frame or
event holds both a taxon and a higher taxon containing it (Puma concolor and Felidae), only
the deeper one is an occurrence, with the larger count. A frame decided
"animal" without a taxon is an occurrence of Animalia (kingdom rank). A frame without a
frame-level decision contributes its detections' decisions, one occurrence per distinct taxon.

Terms (Darwin Core, http://rs.tdwg.org/dwc/terms/): `occurrenceID` (a UUID derived from the
frame or event and the taxon, so re-exports keep their ids), `basisOfRecord`
MachineObservation, `occurrenceStatus` present, `eventID`, `parentEventID` (the deployment),
`eventDate` (a time, or start/end for an event), `samplingProtocol` camera trap,
`scientificName`, `taxonRank`, `kingdom` … `genus`, `specificEpithet`, `vernacularName`,
`individualCount` (animal boxes), `identifiedBy` (the model), `dateIdentified`,
`identificationRemarks` (model, vocabulary, score and which rule decided),
`identificationVerificationStatus` unverified, `decimalLatitude`/`decimalLongitude` and
`geodeticDatum` when known, `associatedMedia` (the image files, " | "-separated).
The archive (`write_dwca`) is the same rows as a tab-separated `occurrence.txt` with a
`meta.xml` naming each column by term URI and a minimal EML `eml.xml`.
"""
from __future__ import annotations

import csv
import io
import os
import statistics
import uuid
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence
from xml.sax.saxutils import escape, quoteattr

from ..durable import atomic_file, write_atomic
from ..errors import InputError
from ..taxonomy import RANKS, Taxon
from .camtrapdp import format_time, parse_time
from .mdjson import answer_taxon, is_ancestor
from .results import Answer, Classification, Frame

__all__ = ["DWC_NS", "TERMS", "occurrence_rows", "write_dwc_occurrences", "write_dwca"]

DWC_NS = "http://rs.tdwg.org/dwc/terms/"
TERMS = ["occurrenceID", "basisOfRecord", "occurrenceStatus", "eventID", "parentEventID", "eventDate",
         "samplingProtocol", "scientificName", "taxonRank", "kingdom", "phylum", "class", "order", "family",
         "genus", "specificEpithet", "vernacularName", "individualCount", "identifiedBy", "dateIdentified",
         "identificationRemarks", "identificationVerificationStatus", "decimalLatitude", "decimalLongitude",
         "geodeticDatum", "associatedMedia"]
_NOT_TAXA = {"", "blank", "human", "vehicle"}
_ID_NAMESPACE = uuid.UUID("5b0e3c2a-7c1e-4c55-9a43-2f1d6c0a9e11")  # taxoclip occurrences


def _candidates(f: Frame) -> list[Classification]:
    return [c for d in f.detections or [] for c in d.classifications]


def _taxa(f: Frame) -> list[tuple[Taxon, Answer, int]]:
    """(taxon, the decision naming it, animal boxes) for a frame's decisions that name a taxon."""
    if f.failure is not None:
        return []
    animals = [d for d in f.detections or [] if d.category == "animal"]
    answers = [f.answer] if f.answer is not None else [d.answer for d in animals if d.answer is not None]
    out: dict[Taxon, tuple[Taxon, Answer, int]] = {}
    for a in answers:
        if a.label in _NOT_TAXA:
            continue
        t = answer_taxon(a, _candidates(f))
        if t is None:
            if a.label != "animal":
                continue  # a custom label: no scientific name to publish
            t = Taxon(kingdom="Animalia")
        if f.answer is not None:
            count = len(animals)
        else:
            count = sum(1 for d in animals if d.answer is not None and answer_taxon(d.answer, d.classifications) == t)
        key = t.with_common("")
        if key not in out or a.score > out[key][1].score:
            out[key] = (t, a, max(count, 1))
    return list(out.values())


def _name(t: Taxon) -> tuple[str, str]:
    r = t.rank
    if r is None:
        return "", ""
    return ((t.species or t.genus) if int(r) == 6 else t.ranks[int(r)]), r.label


def _date(times: list[str | None]) -> str:
    parsed = sorted((p for p in (parse_time(t) for t in times) if p is not None),
                    key=lambda p: p.timestamp() if p.tzinfo else p.replace(tzinfo=timezone.utc).timestamp())
    if not parsed:
        return ""
    fmt = lambda p: format_time(p) if p.tzinfo else p.replace(microsecond=0).isoformat(timespec="seconds")
    a, b = fmt(parsed[0]), fmt(parsed[-1])
    return a if a == b else f"{a}/{b}"


def occurrence_rows(frames: Sequence[Frame], *, model: str, vocabulary: str,
                    identified_at: str | None = None) -> list[dict[str, Any]]:
    """The occurrence records (term -> value) `write_dwc_occurrences` and `write_dwca` write."""
    identified_at = identified_at or format_time(datetime.now(timezone.utc))
    units: dict[str, list[Frame]] = {}
    for f in frames:
        units.setdefault(f"event:{f.event}" if f.event else f"file:{f.file}", []).append(f)
    rows = []
    for key, group in units.items():
        found: dict[Taxon, list] = {}
        for f in group:
            for t, a, count in _taxa(f):
                k = t.with_common("")
                cur = found.get(k)
                if cur is None:
                    found[k] = [t, a, count]
                else:
                    cur[2] = max(cur[2], count)
                    if a.score > cur[1].score:
                        cur[0], cur[1] = t, a
        # a higher taxon beside one it contains says nothing more about the same animals
        for k in sorted(found, key=lambda k: int(k.rank)):  # shallowest first
            deeper = next((o for o in found if is_ancestor(k, o)), None)
            if deeper is not None:
                found[deeper][2] = max(found[deeper][2], found.pop(k)[2])
        if not found:
            continue
        lats = [f.latitude for f in group if f.latitude is not None and f.longitude is not None]
        lons = [f.longitude for f in group if f.latitude is not None and f.longitude is not None]
        for k in sorted(found, key=lambda k: _name(k)):
            t, a, count = found[k]
            name, rank = _name(t)
            remarks = f"classified by {model} over the vocabulary {vocabulary}"
            if a.score == a.score:  # not NaN
                remarks += f" with score {a.score:.4f}"
            if a.source:
                remarks += f"; decided by: {a.source}"
            event = group[0].event
            rows.append({
                "occurrenceID": f"urn:uuid:{uuid.uuid5(_ID_NAMESPACE, key + '|' + name)}",
                "basisOfRecord": "MachineObservation",
                "occurrenceStatus": "present",
                "eventID": event or "",
                "parentEventID": group[0].deployment or "",
                "eventDate": _date([f.datetime for f in group]),
                "samplingProtocol": "camera trap",
                "scientificName": name,
                "taxonRank": rank,
                **{r: v for r, v in zip(RANKS[:6], t.ranks[:6]) if RANKS.index(r) <= int(t.rank)},
                "specificEpithet": t.epithet if int(t.rank) == 6 else "",
                "vernacularName": t.common,
                "individualCount": count,
                "identifiedBy": model,
                "dateIdentified": identified_at,
                "identificationRemarks": remarks,
                "identificationVerificationStatus": "unverified",
                "decimalLatitude": statistics.median(lats) if lats else "",
                "decimalLongitude": statistics.median(lons) if lons else "",
                "geodeticDatum": "EPSG:4326" if lats else "",
                "associatedMedia": " | ".join(str(f.file) for f in group),
            })
    return rows


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(round(v, 6))
    return " ".join(str(v).split())  # no tabs or newlines: the archive's text format has no quoting


def write_dwc_occurrences(frames: Sequence[Frame], path: str | os.PathLike, *, model: str, vocabulary: str,
                          identified_at: str | None = None) -> Path:
    """Occurrences as a CSV with Darwin Core term names as its header (written atomically)."""
    rows = occurrence_rows(frames, model=model, vocabulary=vocabulary, identified_at=identified_at)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(TERMS)
    for r in rows:
        w.writerow([_text(r.get(t)) for t in TERMS])
    path = Path(path)
    write_atomic(path, buf.getvalue().encode("utf-8"))
    return path


def _meta_xml() -> str:
    fields = "\n".join(f'    <field index="{i}" term="{DWC_NS}{t}"/>' for i, t in enumerate(TERMS))
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<archive xmlns="http://rs.tdwg.org/dwc/text/" metadata="eml.xml">
  <core encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" ignoreHeaderLines="1" rowType="{DWC_NS}Occurrence">
    <files>
      <location>occurrence.txt</location>
    </files>
    <id index="0"/>
{fields}
  </core>
</archive>
"""


def _eml(title: str, creator: str, abstract: str, package_id: str, today: str) -> str:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<eml:eml xmlns:eml="eml://ecoinformatics.org/eml-2.1.1" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="eml://ecoinformatics.org/eml-2.1.1 http://rs.gbif.org/schema/eml-gbif-profile/1.1/eml.xsd" packageId={quoteattr(package_id)} system="http://gbif.org" scope="system" xml:lang="eng">
  <dataset>
    <title xml:lang="eng">{escape(title)}</title>
    <creator>
      <organizationName>{escape(creator)}</organizationName>
    </creator>
    <metadataProvider>
      <organizationName>{escape(creator)}</organizationName>
    </metadataProvider>
    <pubDate>{today}</pubDate>
    <language>eng</language>
    <abstract>
      <para>{escape(abstract)}</para>
    </abstract>
    <contact>
      <organizationName>{escape(creator)}</organizationName>
    </contact>
  </dataset>
</eml:eml>
"""


def write_dwca(frames: Sequence[Frame], path: str | os.PathLike, *, model: str, vocabulary: str,
               title: str = "Camera-trap occurrences identified by taxoclip", creator: str = "taxoclip",
               abstract: str | None = None, identified_at: str | None = None) -> Path:
    """A Darwin Core Archive (zip: meta.xml, occurrence.txt, eml.xml) of the occurrences."""
    path = Path(path)
    if path.suffix.lower() != ".zip":
        raise InputError(f"{path}: a Darwin Core Archive is a .zip file")
    rows = occurrence_rows(frames, model=model, vocabulary=vocabulary, identified_at=identified_at)
    lines = ["\t".join(TERMS)] + ["\t".join(_text(r.get(t)) for t in TERMS) for r in rows]
    abstract = abstract or (f"{len(rows)} occurrences from camera-trap images, identified by machine "
                            f"({model}, vocabulary {vocabulary}); not verified by people.")
    today = datetime.now(timezone.utc).date().isoformat()
    with atomic_file(path) as fh:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr("meta.xml", _meta_xml())
            z.writestr("occurrence.txt", "\n".join(lines) + "\n")
            z.writestr("eml.xml", _eml(title, creator, abstract, f"urn:uuid:{uuid.uuid4()}", today))
    return path

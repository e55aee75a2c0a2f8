"""Camtrap DP 1.0 (Camera Trap Data Package, TDWG): writing a package, validating it offline, reading one.

A package is a folder: `datapackage.json` (profile
https://raw.githubusercontent.com/tdwg/camtrap-dp/1.0.2/camtrap-dp-profile.json) and three
tables, `deployments.csv`, `media.csv` and `observations.csv`, each declaring its Camtrap DP
1.0.2 table schema by URL as the standard requires.

What the writer puts where:
- deployments: one per `Frame.deployment` (else the frame's folder). Location, camera and
  times come from the `deployments` argument ({deploymentID: {column: value}}, any column of
  the deployments table, plus `timezone`); else latitude/longitude are the median of the
  frames' own, and start/end the first and last frame. A deployment whose location nobody
  knows gets the placeholders latitude 0, longitude 0 and `locationName` "unknown location",
  said in `deploymentComments` (the table requires coordinates), and is left out of `spatial`.
- media: one per frame with a time. `mediaID` is a hash of the file name (stable across runs).
  `filePath` is the path inside the package when the image lies in `out_dir`, the URL under
  `media_base_url` when one is given, else a `file://` URI (a relative path may not leave the
  package). Times without a UTC offset take the deployment's `timezone`; without one they are
  written as UTC and the deployment gets `timestampIssues: true`. Frames without a time cannot
  be media (the table requires one): by default that is an error; `missing_time="skip"` leaves
  them out (logged).
- observations: media-level, one per detection (`bboxX/Y/Width/Height`; `observationType`
  animal/human/vehicle; for animals `scientificName` from the detection's decision, else its
  best candidate, else the frame's decision), `classificationMethod: machine`, `classifiedBy`
  (the classifier's model id; the detector for human/vehicle and undecided animals),
  `classificationProbability`, `classificationTimestamp`. A frame without detections (or
  decided blank) has one "blank" observation; a failed frame one "unclassified" observation
  with the failure as its comment. Frames with an `event` also get event-level observations:
  one per distinct decision of the event's frames (a higher taxon beside one it contains is
  folded into the deeper one), spanning the event's first to last frame.
"""
from __future__ import annotations

import copy
import csv
import functools
import hashlib
import io
import json
import logging
import math
import mimetypes
import os
import re
import statistics
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence
from urllib.parse import unquote, urlparse

from ..durable import write_atomic
from ..errors import InputError
from ..taxonomy import RANKS, Taxon
from .mdjson import answer_taxon, is_ancestor
from .results import Answer, Classification, Detection, Frame

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["VERSION", "PROFILE_URL", "SCHEMA_URLS", "COLUMNS", "write_camtrap_dp", "validate_camtrap_dp",
           "read_camtrap_dp", "parse_time", "format_time"]

log = logging.getLogger(__name__)

VERSION = "1.0.2"
_BASE = f"https://raw.githubusercontent.com/tdwg/camtrap-dp/{VERSION}"
PROFILE_URL = f"{_BASE}/camtrap-dp-profile.json"
TABLES = ("deployments", "media", "observations")
SCHEMA_URLS = {t: f"{_BASE}/{t}-table-schema.json" for t in TABLES}
# field order of the 1.0.2 table schemas
COLUMNS = {
    "deployments": [
        "deploymentID", "locationID", "locationName", "latitude", "longitude", "coordinateUncertainty",
        "deploymentStart", "deploymentEnd", "setupBy", "cameraID", "cameraModel", "cameraDelay", "cameraHeight",
        "cameraDepth", "cameraTilt", "cameraHeading", "detectionDistance", "timestampIssues", "baitUse",
        "featureType", "habitat", "deploymentGroups", "deploymentTags", "deploymentComments"],
    "media": [
        "mediaID", "deploymentID", "captureMethod", "timestamp", "filePath", "filePublic", "fileName",
        "fileMediatype", "exifData", "favorite", "mediaComments"],
    "observations": [
        "observationID", "deploymentID", "mediaID", "eventID", "eventStart", "eventEnd", "observationLevel",
        "observationType", "cameraSetupType", "scientificName", "count", "lifeStage", "sex", "behavior",
        "individualID", "individualPositionRadius", "individualPositionAngle", "individualSpeed", "bboxX", "bboxY",
        "bboxWidth", "bboxHeight", "classificationMethod", "classifiedBy", "classificationTimestamp",
        "classificationProbability", "observationTags", "observationComments"],
}
_TYPES = {"animal": "animal", "person": "human", "vehicle": "vehicle"}
_SPECIAL = {"blank": "blank", "human": "human", "vehicle": "vehicle", "animal": "animal"}
_PLACEHOLDER = "unknown location"
_ID_COLUMNS = ("observationID", "deploymentID", "mediaID", "eventID", "locationID", "individualID")
_NUMERIC = ("count", "individualPositionRadius", "individualPositionAngle", "individualSpeed", "bboxX", "bboxY",
            "bboxWidth", "bboxHeight", "classificationProbability")


# ----- times --------------------------------------------------------------------------------
def parse_time(text: str | None) -> datetime | None:
    """ISO 8601 (with or without an offset, "Z" too) or EXIF "YYYY:MM:DD HH:MM:SS"; None if unreadable."""
    if not text:
        return None
    s = str(text).strip()
    s = re.sub(r"^(\d{4}):(\d{2}):(\d{2})[ T]", r"\1-\2-\3T", s)
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(s)
    except ValueError:
        return None


def format_time(dt: datetime) -> str:
    """Camtrap DP's form: "YYYY-MM-DDThh:mm:ssZ" or "…±hh:mm" (whole seconds)."""
    off = dt.utcoffset() or timedelta(0)
    base = dt.replace(microsecond=0, tzinfo=None).isoformat(timespec="seconds")
    if off == timedelta(0):
        return base + "Z"
    sign = "-" if off < timedelta(0) else "+"
    minutes = abs(int(off.total_seconds())) // 60
    return f"{base}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


@functools.lru_cache(maxsize=256)
def _zone(name: Any):
    if name in (None, ""):
        return None
    s = str(name).strip()
    if s.upper() in ("UTC", "Z", "GMT"):
        return timezone.utc
    m = re.fullmatch(r"(?:UTC)?([+-])(\d{1,2}):?(\d{2})?", s, re.I)
    if m:
        delta = timedelta(hours=int(m.group(2)), minutes=int(m.group(3) or 0))
        return timezone(delta if m.group(1) == "+" else -delta)
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo(s)
    except Exception:
        raise InputError(f"unknown timezone {s!r}: give an IANA name (Europe/Brussels) or an offset (+02:00)") from None


# ----- small helpers ------------------------------------------------------------------------
def _hash(text: str, n: int = 12) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:n]


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "" if not math.isfinite(v) else repr(round(v, 6))
    return str(v)


def _csv(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in columns])
    return buf.getvalue().encode("utf-8")


def _is_url(s: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+.-]*://", s, re.I) is not None


def _deployment_of(f: Frame) -> str:
    return f.deployment or os.path.dirname(str(f.file).replace("\\", "/")) or "."


def _candidates(f: Frame) -> list[Classification]:
    return [c for d in f.detections or [] for c in d.classifications]


def _decision(answer: Answer | None, candidates: Sequence[Classification]) -> tuple[str, Taxon | None, str]:
    """(observationType, taxon or None, custom label or "") for a decision."""
    if answer is None or not answer.label:
        return "", None, ""
    t = answer_taxon(answer, candidates)
    if t is not None:
        return "animal", t, ""
    if answer.label in _SPECIAL:
        return _SPECIAL[answer.label], None, ""
    return "animal", None, answer.label  # a custom label


def _sci(t: Taxon | None) -> tuple[str, str]:
    if t is None or t.rank is None:
        return "", ""
    r = t.rank
    return (t.species or t.genus) if int(r) == 6 else t.ranks[int(r)], r.label


def _score(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) and 0.0 <= v <= 1.0 else None


# ----- writing ------------------------------------------------------------------------------
def write_camtrap_dp(frames: Sequence[Frame], out_dir: str | os.PathLike, *, project: Mapping | None = None,
                     classifier: str, deployments: Mapping[str, Mapping] | None = None,
                     detector: str | None = None, package: Mapping | None = None,
                     images_root: str | os.PathLike | None = None, media_base_url: str | None = None,
                     missing_time: str = "error", min_conf: float = 0.0,
                     classified_at: str | None = None) -> Path:
    """Write frames as a Camtrap DP 1.0 package in `out_dir`; returns the datapackage.json path.

    `project`: Camtrap DP's `project` object (title, samplingDesign, captureMethod, …), merged
    over placeholders that validate. `package`: other top-level properties (title,
    contributors, licenses, …). `classifier` / `detector`: model ids for `classifiedBy`.
    `images_root`: what relative frame names are relative to. `min_conf`: detections below it
    are not observations. See the module docstring for which value goes where."""
    if missing_time not in ("error", "skip"):
        raise ValueError("missing_time must be 'error' or 'skip'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    deployments = {str(k): dict(v) for k, v in (deployments or {}).items()}
    for dep, info in deployments.items():
        unknown = set(info) - set(COLUMNS["deployments"]) - {"timezone"}
        if unknown:
            raise InputError(f"deployment {dep!r}: unknown deployment fields {', '.join(sorted(unknown))}; "
                             f"expected Camtrap DP deployments columns or 'timezone'")
    classified_at = classified_at or format_time(datetime.now(timezone.utc))
    detector = detector or classifier
    root = Path(images_root) if images_root is not None else None

    # --- media ---
    dep_frames: dict[str, list[int]] = {}
    times: dict[int, datetime] = {}
    naive_deps: set[str] = set()
    missing = []
    for i, f in enumerate(frames):
        dep = _deployment_of(f)
        t = parse_time(f.datetime)
        if t is None:
            missing.append(f.file)
            continue
        if t.tzinfo is None:
            tz = _zone(deployments.get(dep, {}).get("timezone"))
            if tz is None:
                naive_deps.add(dep)
                tz = timezone.utc
            t = t.replace(tzinfo=tz)
        times[i] = t
        dep_frames.setdefault(dep, []).append(i)
    if missing:
        msg = f"{len(missing)} frame(s) have no readable time (first: {missing[0]}); Camtrap DP media require one"
        if missing_time == "error":
            raise InputError(msg + " (missing_time='skip' leaves them out)")
        log.warning("%s; left out", msg)
    if not times:
        raise InputError(f"{out}: no frames with a time to write")

    media_rows, media_id = [], {}
    used: set[str] = set()
    for i in sorted(times):
        f = frames[i]
        mid, n = _hash(f.file), 12
        while mid in used:
            n += 4
            mid = _hash(f.file, n) if n <= 40 else f"{_hash(f.file)}-{len(used)}"
        used.add(mid)
        media_id[i] = mid
        file_path, public = _file_path(str(f.file), root, out, media_base_url)
        name = os.path.basename(str(f.file).replace("\\", "/").rstrip("/")) or str(f.file)
        mediatype = mimetypes.guess_type(name.lower())[0] or "image/jpeg"
        media_rows.append({"mediaID": mid, "deploymentID": _deployment_of(f), "timestamp": format_time(times[i]),
                           "filePath": file_path, "filePublic": public, "fileName": name,
                           "fileMediatype": mediatype if re.match(r"^(image|video|audio)/", mediatype)
                           else "image/jpeg"})

    # --- observations ---
    obs_rows: list[dict] = []
    per_media: dict[int, list[dict]] = {}
    for i in sorted(times):
        f, ts = frames[i], format_time(times[i])
        base = {"deploymentID": _deployment_of(f), "mediaID": media_id[i], "eventID": f.event, "eventStart": ts,
                "eventEnd": ts, "observationLevel": "media", "classificationMethod": "machine",
                "classificationTimestamp": classified_at}
        rows = []
        if f.failure is not None or f.detections is None:
            rows.append({**base, "observationType": "unclassified", "observationComments": f.failure,
                         "classificationMethod": None, "classificationTimestamp": None})
        else:
            kept = [d for d in f.detections if d.conf >= min_conf and d.category in _TYPES]
            if f.answer is not None and f.answer.label == "blank":
                kept = []
            if not kept:
                p = _score(f.answer.score) if f.answer is not None and f.answer.label == "blank" else None
                if p is None:
                    p = 1.0 - max((d.conf for d in f.detections), default=0.0)
                rows.append({**base, "observationType": "blank", "classifiedBy": detector,
                             "classificationProbability": _score(p)})
            animals = [d for d in kept if d.category == "animal"]
            for d in kept:
                rows.append({**base, **_detection_row(d, f, len(animals), classifier, detector)})
        for n, r in enumerate(rows, 1):
            r["observationID"] = f"{media_id[i]}_{n}"
        per_media[i] = rows
        obs_rows.extend(rows)

    events = _event_rows(frames, times, per_media, classifier, detector, classified_at)
    obs_rows = events + obs_rows

    # --- deployments ---
    dep_rows, known_points = [], []
    for dep in sorted(dep_frames):
        idx = dep_frames[dep]
        given = deployments.get(dep, {})
        row: dict[str, Any] = {c: given.get(c) for c in COLUMNS["deployments"]}
        row["deploymentID"] = dep
        comments = [str(given["deploymentComments"])] if given.get("deploymentComments") else []
        lat, lon = given.get("latitude"), given.get("longitude")
        if lat in (None, "") or lon in (None, ""):
            lats = [frames[i].latitude for i in idx if frames[i].latitude is not None]
            lons = [frames[i].longitude for i in idx if frames[i].longitude is not None]
            lat, lon = (statistics.median(lats), statistics.median(lons)) if lats and lons else (None, None)
        if lat is None:
            row["latitude"], row["longitude"] = 0.0, 0.0
            row["locationName"] = row["locationName"] or _PLACEHOLDER
            comments.append("location unknown: latitude and longitude are placeholders (0, 0)")
        else:
            row["latitude"], row["longitude"] = float(lat), float(lon)
            known_points.append((float(lon), float(lat)))
        first, last = min(times[i] for i in idx), max(times[i] for i in idx)
        row["deploymentStart"] = given.get("deploymentStart") or format_time(first)
        row["deploymentEnd"] = given.get("deploymentEnd") or format_time(last)
        if dep in naive_deps and given.get("timestampIssues") is None:
            row["timestampIssues"] = True
            comments.append("media times had no UTC offset and were written as UTC")
        row["deploymentComments"] = "; ".join(comments) or None
        dep_rows.append(row)

    # --- files (datapackage.json last: a folder with one is complete) ---
    for name, rows in (("deployments", dep_rows), ("media", media_rows), ("observations", obs_rows)):
        write_atomic(out / f"{name}.csv", _csv(COLUMNS[name], rows))
    descriptor = _descriptor(project, package, obs_rows, times, known_points)
    target = out / "datapackage.json"
    write_atomic(target, (json.dumps(descriptor, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return target


def _file_path(file: str, root: Path | None, out: Path, base_url: str | None) -> tuple[str, bool]:
    if _is_url(file):
        return file, file.lower().startswith(("http://", "https://"))
    p = Path(file)
    rel_name = p.as_posix()
    if not p.is_absolute():
        p = (root if root is not None else Path.cwd()) / p
    p = Path(os.path.abspath(p))
    if base_url:
        if root is not None:
            try:
                rel_name = p.relative_to(Path(os.path.abspath(root))).as_posix()
            except ValueError:
                pass
        return f"{base_url.rstrip('/')}/{rel_name.lstrip('/')}", True
    try:
        return p.relative_to(Path(os.path.abspath(out))).as_posix(), False
    except ValueError:
        return p.as_uri(), False


def _detection_row(d: Detection, f: Frame, n_animals: int, classifier: str, detector: str) -> dict:
    x, y, w, h = (min(1.0, max(0.0, float(v))) for v in d.bbox)
    w, h = min(w, 1.0 - x), min(h, 1.0 - y)
    row: dict[str, Any] = {"observationType": _TYPES[d.category], "count": 1}
    if w > 0 and h > 0:
        row.update(bboxX=x, bboxY=y, bboxWidth=w, bboxHeight=h)
    if d.category != "animal":
        return {**row, "classifiedBy": detector, "classificationProbability": _score(d.conf)}
    answer = d.answer
    if answer is None or not answer.label or answer.label == "animal":
        if d.classifications:
            c = d.classifications[0]
            answer = Answer(c.name, c.rank, c.score, "model", tuple(c.lineage), c.common_name) if c.rank else \
                Answer(c.name, "", c.score, "model")
        elif f.answer is not None and n_animals == 1:
            answer = f.answer
    kind, taxon, label = _decision(answer, d.classifications or _candidates(f))
    name, _ = _sci(taxon)
    if name:
        row.update(scientificName=name, _taxon=taxon, classifiedBy=classifier,
                   classificationProbability=_score(answer.score))
        if answer.source:
            row["observationComments"] = f"decided by: {answer.source}"
    elif label:
        row.update(observationTags=f"label:{label}", classifiedBy=classifier,
                   classificationProbability=_score(answer.score))
    else:
        row.update(classifiedBy=detector, classificationProbability=_score(d.conf))
    return row


def _event_rows(frames: Sequence[Frame], times: dict[int, datetime], per_media: dict[int, list[dict]],
                classifier: str, detector: str, classified_at: str) -> list[dict]:
    groups: dict[str, list[int]] = {}
    for i in sorted(times):
        if frames[i].event:
            groups.setdefault(str(frames[i].event), []).append(i)
    rows = []
    for event, idx in groups.items():
        start, end = min(times[i] for i in idx), max(times[i] for i in idx)
        base = {"deploymentID": _deployment_of(frames[idx[0]]), "mediaID": None, "eventID": event,
                "eventStart": format_time(start), "eventEnd": format_time(end), "observationLevel": "event",
                "classificationMethod": "machine", "classificationTimestamp": classified_at}
        found: dict[tuple, dict] = {}
        for i in idx:
            f = frames[i]
            kind, taxon, label = _decision(f.answer, _candidates(f))
            media = [r for r in per_media.get(i, []) if r["observationType"] not in ("blank", "unclassified")]
            if not kind:  # no frame decision: the frame's media-level observations speak
                for r in media:
                    key = (r["observationType"], r.get("scientificName") or "", r.get("observationTags") or "")
                    _merge(found, key, r.get("classificationProbability"), 1, r.get("classifiedBy"), r.get("_taxon"))
                continue
            name, _ = _sci(taxon)
            count = max(1, sum(1 for r in media if r["observationType"] == kind)) if kind != "blank" else 1
            by = classifier if (name or label) else detector
            _merge(found, (kind, name, f"label:{label}" if label else ""), _score(f.answer.score), count, by, taxon)
        non_blank = {k: v for k, v in found.items() if k[0] != "blank"}
        found = non_blank or found
        taxa = {k: v["taxon"] for k, v in found.items() if v["taxon"] is not None}
        for k in sorted(taxa, key=lambda k: int(taxa[k].rank)):  # shallowest first: the deeper one speaks
            deeper = next((o for o in taxa if o in found and is_ancestor(taxa[k], taxa[o])), None)
            if deeper is not None:
                found[deeper]["count"] = max(found[deeper]["count"], found.pop(k)["count"])
        for n, ((kind, name, tags), v) in enumerate(sorted(found.items(), key=lambda kv: kv[0]), 1):
            rows.append({**base, "observationID": f"{_hash('event:' + event)}_e{n}", "observationType": kind,
                         "scientificName": name or None, "count": v["count"] if kind != "blank" else None,
                         "observationTags": tags or None, "classifiedBy": v["by"],
                         "classificationProbability": v["p"], "_taxon": v["taxon"]})
    return rows


def _merge(found: dict, key: tuple, p: float | None, count: int, by: str | None, taxon: Taxon | None) -> None:
    cur = found.setdefault(key, {"p": None, "count": 0, "by": by, "taxon": taxon})
    if p is not None and (cur["p"] is None or p > cur["p"]):
        cur["p"] = p
    cur["count"] = max(cur["count"], count)


def _descriptor(project: Mapping | None, package: Mapping | None, obs_rows: list[dict],
                times: dict[int, datetime], points: list[tuple[float, float]]) -> dict:
    from .. import __version__

    levels = ["media"] + (["event"] if any(r["observationLevel"] == "event" for r in obs_rows) else [])
    proj = {"title": "Camera-trap images classified by taxoclip", "samplingDesign": "opportunistic",
            "captureMethod": ["activityDetection"], "individualAnimals": False, "observationLevel": levels}
    proj.update(project or {})
    if points:
        lons, lats = [p[0] for p in points], [p[1] for p in points]
        if len(set(points)) == 1:
            spatial: dict = {"type": "Point", "coordinates": [lons[0], lats[0]]}
        else:
            x0, x1, y0, y1 = min(lons), max(lons), min(lats), max(lats)
            spatial = {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}
    else:  # documented placeholder: no deployment has a known location
        spatial = {"type": "Point", "coordinates": [0.0, 0.0]}
    dates = sorted(t.date().isoformat() for t in times.values())
    d: dict[str, Any] = {
        "resources": [{"name": t, "path": f"{t}.csv", "profile": "tabular-data-resource", "format": "csv",
                       "mediatype": "text/csv", "encoding": "utf-8", "schema": SCHEMA_URLS[t]} for t in TABLES],
        "profile": PROFILE_URL,
        "name": "taxoclip-camera-trap-package",
        "id": str(uuid.uuid4()),
        "created": format_time(datetime.now(timezone.utc)),
        "title": proj["title"],
        "contributors": [{"title": "taxoclip", "role": "contributor"}],
        "sources": [{"title": "taxoclip", "path": "https://github.com/taxoclip/taxoclip", "version": __version__}],
        "project": proj,
        "spatial": spatial,
        "temporal": {"start": dates[0], "end": dates[-1]},
        "taxonomic": _taxonomic(obs_rows),
    }
    d.update(package or {})
    return d


def _taxonomic(obs_rows: list[dict]) -> list[dict]:
    """The package's taxonomic list: each taxon named in the observations, with its ranks."""
    out: dict[str, dict] = {}
    for r in obs_rows:
        t, name = r.get("_taxon"), r.get("scientificName")
        if not name or name in out:
            continue
        entry: dict[str, Any] = {"scientificName": name}
        if t is not None and t.rank is not None:
            entry["taxonRank"] = t.rank.label
            for rank, v in zip(RANKS[:6], t.ranks[:6]):
                if v and RANKS.index(rank) < int(t.rank):
                    entry[rank] = v
            if t.common:
                entry["vernacularNames"] = {"eng": t.common}
        out[name] = entry
    return [out[n] for n in sorted(out)]


# ----- validating ---------------------------------------------------------------------------
def _profile_registry(standards: Path):
    """jsonschema references of the Camtrap DP profile, answered from local files (no network).

    The profile's own URL -> the local profile; the Data Package base schema -> frictionless's
    package metadata profile (the descriptor is also checked by frictionless itself); GeoJSON
    -> the GeoJSON schema frictionless ships."""
    import frictionless
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    profile = json.loads((standards / "camtrap-dp-profile.json").read_text(encoding="utf-8"))
    geo_path = Path(frictionless.__file__).parent / "assets" / "profiles" / "geojson.json"
    geo = json.loads(geo_path.read_text(encoding="utf-8"))
    base = copy.deepcopy(frictionless.Package.metadata_profile)
    reg = Registry()
    for url, doc in ((PROFILE_URL, profile),
                     ("https://specs.frictionlessdata.io/schemas/data-package.json", base),
                     ("http://json.schemastore.org/geojson.json", geo),
                     ("https://json.schemastore.org/geojson.json", geo),
                     (str(geo.get("id", "")).rstrip("#"), geo)):
        if url:
            reg = reg.with_resource(url, Resource.from_contents(doc, default_specification=DRAFT4))
    return profile, reg


def validate_camtrap_dp(out_dir: str | os.PathLike, standards: str | os.PathLike, *,
                        limit: int = 200) -> list[str]:
    """Problems with a Camtrap DP package ([] when valid), checked offline against the Camtrap DP
    1.0.2 profile and table schemas in the folder `standards` (camtrap-dp-profile.json and
    <table>-table-schema.json).

    `datapackage.json` is checked against the profile with jsonschema; the tables with
    frictionless, each resource's remote schema URL swapped for the local schema (so nothing is
    fetched), including primary and foreign keys. A few rules the schemas cannot express
    follow (temporal start and end are dates; a media-level observation names its media;
    boxes stay inside the image; an event does not end before it starts)."""
    try:
        import jsonschema
        from frictionless import Package
    except ImportError as e:
        raise InputError(f"validating Camtrap DP needs frictionless and jsonschema ({e.name} is missing): "
                         f"pip install 'taxoclip[camtrap]'") from None

    pkg_dir = Path(out_dir)
    if pkg_dir.name == "datapackage.json":
        pkg_dir = pkg_dir.parent
    std = Path(standards)
    missing = [n for n in ["camtrap-dp-profile.json", *(f"{t}-table-schema.json" for t in TABLES)]
               if not (std / n).is_file()]
    if missing:
        raise InputError(f"{std}: not a Camtrap DP standards folder (missing {', '.join(missing)})")
    try:
        descriptor = json.loads((pkg_dir / "datapackage.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"{pkg_dir}: no datapackage.json"]
    except (OSError, ValueError) as e:
        return [f"{pkg_dir / 'datapackage.json'}: unreadable ({e})"]
    problems: list[str] = []
    profile, registry = _profile_registry(std)
    validator = jsonschema.Draft4Validator(profile, registry=registry,
                                           format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)
    for e in sorted(validator.iter_errors(descriptor), key=lambda e: [str(p) for p in e.absolute_path]):
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        message = e.message if len(e.message) <= 300 else e.message[:297] + "..."
        problems.append(f"datapackage.json: {where}: {message}")
    problems += _temporal_problems(descriptor.get("temporal"))
    if not str(descriptor.get("profile", "")).endswith("camtrap-dp-profile.json"):
        problems.append(f"datapackage.json: profile {descriptor.get('profile')!r} is not a Camtrap DP profile URL")

    local = {t: json.loads((std / f"{t}-table-schema.json").read_text(encoding="utf-8")) for t in TABLES}
    offline = copy.deepcopy(descriptor)
    offline.pop("profile", None)
    offline.pop("$schema", None)
    names = set()
    for r in offline.get("resources", []) if isinstance(offline.get("resources"), list) else []:
        if not isinstance(r, dict) or r.get("name") not in TABLES:
            continue
        names.add(r["name"])
        schema = r.get("schema")
        if not isinstance(schema, str) or not schema.endswith(f"/{r['name']}-table-schema.json"):
            problems.append(f"resource {r['name']}: schema {schema!r} is not the Camtrap DP "
                            f"{r['name']} table schema URL")
        elif VERSION not in schema:
            problems.append(f"resource {r['name']}: schema {schema} is not Camtrap DP {VERSION}; "
                            f"checked against {VERSION}")
        r["schema"] = local[r["name"]]
    for t in TABLES:
        if t not in names:
            problems.append(f"datapackage.json: no {t} resource")
    if problems and any(p.startswith("datapackage.json: no ") for p in problems):
        return problems
    try:
        report = Package(offline, basepath=str(pkg_dir)).validate(limit_errors=limit)
    except Exception as e:  # frictionless refuses the descriptor itself
        return problems + [f"frictionless: {e}"]
    for task in report.tasks:
        for e in task.errors:
            row = getattr(e, "row_number", None)
            fld = getattr(e, "field_name", None)
            at = ", ".join(x for x in (f"row {row}" if row else "", f"field {fld}" if fld else "") if x)
            problems.append(f"{task.name}: {at + ': ' if at else ''}{e.type}: {e.note or e.message}")
    for e in report.errors:
        problems.append(f"package: {e.type}: {e.note or e.message}")
    if not problems:
        problems += _extra_rules(pkg_dir)
    return problems[:limit]


def _temporal_problems(temporal: Any) -> list[str]:
    """`temporal.start`/`end` are dates (JSON Schema draft 4 has no "date" format to check them)."""
    if not isinstance(temporal, dict):
        return []
    out, days = [], {}
    for k in ("start", "end"):
        v = temporal.get(k)
        try:
            days[k] = datetime.strptime(str(v), "%Y-%m-%d").date()
        except ValueError:
            out.append(f"datapackage.json: temporal/{k}: {v!r} is not a date (YYYY-MM-DD)")
    if len(days) == 2 and days["start"] > days["end"]:
        out.append("datapackage.json: temporal: start is after end")
    return out


def _extra_rules(pkg_dir: Path) -> list[str]:
    out = []
    with open(pkg_dir / "observations.csv", newline="", encoding="utf-8") as fh:
        for n, r in enumerate(csv.DictReader(fh), 2):
            if r.get("observationLevel") == "media" and not r.get("mediaID"):
                out.append(f"observations: row {n}: a media-level observation without mediaID")
            try:
                if r.get("bboxX") and float(r["bboxX"]) + float(r["bboxWidth"]) > 1 + 1e-6:
                    out.append(f"observations: row {n}: bboxX + bboxWidth > 1")
                if r.get("bboxY") and float(r["bboxY"]) + float(r["bboxHeight"]) > 1 + 1e-6:
                    out.append(f"observations: row {n}: bboxY + bboxHeight > 1")
            except (KeyError, ValueError):
                out.append(f"observations: row {n}: a box needs all of bboxX, bboxY, bboxWidth, bboxHeight")
            a, b = parse_time(r.get("eventStart")), parse_time(r.get("eventEnd"))
            if a and b and a.tzinfo and b.tzinfo and a > b:
                out.append(f"observations: row {n}: eventStart is after eventEnd")
    return out


# ----- reading ------------------------------------------------------------------------------
def read_camtrap_dp(path: str | os.PathLike) -> tuple[list[Frame], "pd.DataFrame"]:
    """A package's media as frames and its observations as a table (labels, for evaluation).

    Frames: `file` is the media's path resolved against the package folder (URLs stay URLs,
    `file://` URIs become paths), with `datetime`, `deployment`, the deployment's latitude and
    longitude, and the `event` of its media-level observations; they carry no detections.
    The observations keep every column of the table (IDs as text, numbers as numbers), plus
    `file`: the resolved path of the observation's media (empty for event-level rows)."""
    import pandas as pd

    p = Path(path)
    pkg_dir = p.parent if p.name == "datapackage.json" else p
    try:
        descriptor = json.loads((pkg_dir / "datapackage.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{pkg_dir}: not a Camtrap DP package (no datapackage.json)") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{pkg_dir / 'datapackage.json'}: unreadable ({e})") from None
    paths = {r.get("name"): r.get("path") for r in descriptor.get("resources", []) if isinstance(r, dict)}
    tables = {}
    for t in TABLES:
        rel = paths.get(t)
        if not isinstance(rel, str):
            raise InputError(f"{pkg_dir}: datapackage.json has no {t} resource with a path")
        try:
            tables[t] = pd.read_csv(pkg_dir / rel, dtype=str, keep_default_na=False)
        except FileNotFoundError:
            raise InputError(f"{pkg_dir / rel}: missing ({t} table named in datapackage.json)") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as e:
            raise InputError(f"{pkg_dir / rel}: unreadable CSV ({e})") from None
    deps, media, obs = tables["deployments"], tables["media"], tables["observations"]
    for col, table in (("deploymentID", deps), ("mediaID", media), ("filePath", media), ("timestamp", media)):
        if col not in table.columns:
            raise InputError(f"{pkg_dir}: {'deployments' if table is deps else 'media'} table has no {col} column")
    where = {r["deploymentID"]: (_float(r.get("latitude")), _float(r.get("longitude")))
             for r in deps.to_dict("records")}
    media_level = obs[obs.get("observationLevel", pd.Series([""] * len(obs))) == "media"] if len(obs) else obs
    event_of: dict[str, str] = {}
    if "eventID" in obs.columns and len(media_level):
        for mid, ev in zip(media_level["mediaID"], media_level["eventID"]):
            if mid and ev:
                event_of.setdefault(mid, ev)
    frames, file_of = [], {}
    for r in media.to_dict("records"):
        file = _resolve(r["filePath"], pkg_dir)
        file_of[r["mediaID"]] = file
        lat, lon = where.get(r["deploymentID"], (None, None))
        frames.append(Frame(file, datetime=r["timestamp"] or None, deployment=r["deploymentID"] or None,
                            latitude=lat, longitude=lon, event=event_of.get(r["mediaID"])))
    obs = obs.copy()
    for c in obs.columns:
        if c in _NUMERIC:
            obs[c] = pd.to_numeric(obs[c], errors="coerce")  # "" -> NaN
        elif c not in _ID_COLUMNS:
            obs[c] = obs[c].where(obs[c] != "")  # "" -> missing; IDs stay text ("" where none)
    obs["file"] = obs["mediaID"].map(file_of).fillna("") if "mediaID" in obs.columns else ""
    return frames, obs


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _resolve(file_path: str, pkg_dir: Path) -> str:
    if file_path.lower().startswith("file://"):
        return unquote(urlparse(file_path).path)
    if _is_url(file_path):
        return file_path
    return str(pkg_dir / file_path)

"""MegaDetector batch output JSON (format 1.0–1.6): reading any of them, writing 1.6, checking.

The format is MegaDetector's contract with Timelapse, AddaxAI, SpeciesNet's converters and
its own postprocessing (https://lila.science/megadetector-output-format, validator:
`megadetector.postprocessing.validate_batch_results`). What we write:

- `info`: `format_version` "1.6", `detector`, `detection_completion_time`, `detector_metadata`,
  `classifier`, `classification_completion_time`, `classifier_metadata` (model id, vocabulary
  name and hash, …).
- `detection_categories` {"1": "animal", "2": "person", "3": "vehicle"}.
- `classification_categories`: id -> name ("0", "1", … in order of first appearance, after the
  ids fixed by `categories_from`), and `classification_category_descriptions`: id -> the
  lineage as SpeciesNet-style semicolon fields, ranks first and the common name last:
  "Animalia;Chordata;Mammalia;Carnivora;Felidae;Puma;concolor;puma". SpeciesNet writes
  "<uuid>;class;order;family;genus;epithet;common" in lower case; we keep kingdom and phylum
  (BioCLIP names plants, fungi and insects too) and the names' case. A custom label has empty
  rank fields. Both forms (and the 7-rank form) are read back.
- per image: `file`, `detections` (`category`, `conf`, `bbox` [x, y, w, h] normalised,
  `classifications` [[id, score], …] best first), or `failure` with `detections: null`.
- Fields the format does not define, which MegaDetector's validator and tools ignore:
  the decision as SpeciesNet names it per image, `prediction` / `prediction_score` /
  `prediction_source` (plus `prediction_rank` and `prediction_description`, the lineage in the
  description form), the same per detection for its own decision, and the frame's context
  (`datetime`, `deployment`, `latitude`, `longitude`, `event`, `width`, `height`) so a file
  read back gives the frames that were written.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..durable import write_atomic
from ..errors import InputError
from ..taxonomy import RANKS, Taxon, parse_lineage
from .results import DETECTION_CATEGORIES, Answer, Classification, Detection, Frame

__all__ = ["FORMAT_VERSION", "READ_VERSIONS", "BOX_TOLERANCE", "EDGE_TOLERANCE", "read_md_json", "write_md_json", "check_md_json",
           "description_of", "classification_of_description", "taxon_of", "lineage_of", "answer_taxon",
           "is_ancestor"]

log = logging.getLogger(__name__)

FORMAT_VERSION = "1.6"
READ_VERSIONS = ("1.0", "1.1", "1.2", "1.3", "1.4", "1.5", "1.6")
BOX_TOLERANCE = 1e-6  # a coordinate this far outside [0, 1] is still fine
# MegaDetector rounds each coordinate to 3-4 decimals, so x+w of a box touching the right edge
# can be 1.0001: read such boxes (clipped to the image), but not one whose sum is far past 1
EDGE_TOLERANCE = 1e-3
_NAME_TO_ID = {v: k for k, v in DETECTION_CATEGORIES.items()}
_CATEGORY_SYNONYMS = {"human": "person"}  # SpeciesNet's detector name for MegaDetector's "person"
_CONTEXT = ("datetime", "deployment", "latitude", "longitude", "event", "width", "height")
_TIME = "%Y-%m-%d %H:%M:%S"  # how MegaDetector writes completion times
# a taxon id before the ranks ("<uuid>;class;…" as SpeciesNet writes): not a kingdom
_LEADING_ID = re.compile(r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\d+|[0-9a-f]{32})$", re.I)


# ----- lineages -----------------------------------------------------------------------------
def taxon_of(lineage: Sequence[str], common: str = "") -> Taxon:
    """A lineage as `Classification`/`Answer` hold it (kingdom … down to a rank; the last slot an
    epithet or a binomial) as a `Taxon`."""
    vals = [str(v or "").strip() for v in list(lineage)[:7]]
    vals += [""] * (7 - len(vals))
    try:
        return Taxon.from_ranks(vals, common)
    except ValueError:  # a binomial whose genus disagrees with the genus slot: keep the epithet
        words = vals[6].split()
        return Taxon(*vals[:6], words[-1] if words else "", common)


def lineage_of(taxon: Taxon) -> tuple[str, ...]:
    """kingdom … down to the deepest filled rank (the last slot is the epithet at species)."""
    r = taxon.rank
    return () if r is None else tuple(taxon.ranks[: int(r) + 1])


def _field(s: str) -> str:
    return " ".join(str(s or "").replace(";", ",").split())


def description_of(lineage: Sequence[str], common: str = "") -> str:
    """Seven rank fields and the common name, ';'-separated (empty fields for a custom label)."""
    vals = [_field(v) for v in list(lineage)[:7]]
    vals += [""] * (7 - len(vals))
    return ";".join(vals + [_field(common)])


def classification_of_description(name: str, description: str | None) -> tuple[str, tuple[str, ...], str]:
    """(rank, lineage, common name) from a category description in any form we know.

    Our own eight fields keep their case; SpeciesNet's "<uuid>;class;…;epithet;common" and the
    seven-rank form go through `taxonomy.parse_lineage`. Anything else is a custom label."""
    if not description:
        return "", (), ""
    parts = [p.strip() for p in str(description).split(";")]
    if len(parts) == 8 and not _LEADING_ID.match(parts[0]):
        ranks, common = parts[:7], parts[7]
    else:
        try:
            t = parse_lineage(description)
        except ValueError:
            return "", (), ""
        ranks, common = list(t.ranks), t.common
    depth = max((i for i, v in enumerate(ranks) if v), default=-1)
    if depth < 0:
        return "", (), common
    return RANKS[depth], tuple(ranks[: depth + 1]), common


def is_ancestor(a: Taxon, b: Taxon) -> bool:
    """Whether `a` is a higher taxon containing `b` (Felidae of Puma concolor)."""
    if a.rank is None or b.rank is None or a.rank >= b.rank:
        return False
    return b.truncate(a.rank) == a.with_common("")


def answer_taxon(answer: Answer | None, candidates: Iterable[Classification] = ()) -> Taxon | None:
    """The taxon a decision names, with its lineage: its own, else that of a candidate holding the
    decided name at the decided rank (decisions carry only a name and a rank). None when the
    answer is not a taxon (blank, human, vehicle, animal, a custom label)."""
    if answer is None or not answer.rank or answer.rank not in RANKS:
        return None
    r = RANKS.index(answer.rank)
    if answer.lineage:
        t = taxon_of(answer.lineage, answer.common_name)
        return t if t.rank is not None else None
    want = answer.label.strip().lower()
    for c in candidates:
        t = taxon_of(c.lineage, c.common_name)
        if t.empty:
            continue
        if (t.species if r == 6 else t.ranks[r]).lower() == want:
            t = t.truncate(r) if r < 6 else t
            return t.with_common(answer.common_name or (c.common_name if r == 6 else ""))
    # no candidate holds it: the name alone, at its rank
    vals = [""] * 7
    if r == 6:
        words = answer.label.split()
        vals[5], vals[6] = (words[0], " ".join(words[1:])) if len(words) > 1 else ("", answer.label)
    else:
        vals[r] = answer.label
    return Taxon(*vals, answer.common_name)


# ----- reading ------------------------------------------------------------------------------
def _version(info: Any, where: str) -> str:
    if not isinstance(info, dict):
        raise InputError(f"{where}: not a MegaDetector batch file: no 'info' object")
    if "format_version" not in info:
        raise InputError(f"{where}: no info.format_version; cannot tell which MegaDetector format this is")
    raw = info["format_version"]
    text = str(raw).strip()
    m = re.fullmatch(r"(\d+)\.(\d+)", text)
    if m is None or isinstance(raw, bool):
        raise InputError(f"{where}: unreadable info.format_version {raw!r}; expected one of {', '.join(READ_VERSIONS)}")
    version = f"{int(m.group(1))}.{int(m.group(2))}"
    if version not in READ_VERSIONS:
        newer = (int(m.group(1)), int(m.group(2))) > (1, 6)
        raise InputError(f"{where}: MegaDetector format version {text} is {'newer than' if newer else 'not'} "
                         f"one taxoclip reads ({', '.join(READ_VERSIONS)})")
    return version


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _box_problem(bbox: Any, tol: float = BOX_TOLERANCE, edge_tol: float = BOX_TOLERANCE) -> str | None:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return f"bbox {bbox!r} is not four numbers"
    vals = [_number(v) for v in bbox]
    if any(v is None for v in vals):
        return f"bbox {bbox!r} is not four numbers"
    x, y, w, h = vals
    if min(x, y, w, h) < -tol or max(x, y, w, h) > 1 + tol:
        return f"bbox {list(bbox)} lies outside [0, 1]"
    if x + w > 1 + edge_tol or y + h > 1 + edge_tol:
        return f"bbox {list(bbox)} reaches past the image edge (x+w or y+h > 1)"
    return None


def _clamp(bbox: Sequence[float]) -> tuple[float, float, float, float]:
    x, y, w, h = (min(1.0, max(0.0, float(v))) for v in bbox)
    return x, y, min(w, 1.0 - x), min(h, 1.0 - y)


def _read_answer(d: Mapping, where: str) -> Answer | None:
    if "prediction" not in d:
        return None
    label = d.get("prediction")
    score = _number(d.get("prediction_score"))
    rank = d.get("prediction_rank")
    lineage: tuple[str, ...] = ()
    common = ""
    if isinstance(d.get("prediction_description"), str):
        r, lineage, common = classification_of_description(str(label), d["prediction_description"])
        rank = rank if rank is not None else r
    elif rank is None and isinstance(label, str) and label.count(";") >= 5:  # SpeciesNet's own string
        r, lineage, common = classification_of_description("", label)
        t = taxon_of(lineage, common)
        label, rank = (t.species or t.ranks[RANKS.index(r)]) if r else common, r
    return Answer(str(label or ""), str(rank or ""), math.nan if score is None else score,
                  str(d.get("prediction_source") or ""), tuple(lineage), common)


def _read_image(im: Any, i: int, cats: dict[str, str], classes: dict[str, tuple], root: Path | None,
                where: str) -> Frame:
    if not isinstance(im, dict) or not isinstance(im.get("file"), str) or not im["file"]:
        raise InputError(f"{where}: images[{i}] has no 'file'")
    frame = Frame(im["file"])
    for k in _CONTEXT:
        v = im.get(k)
        if v is None:
            continue
        try:
            setattr(frame, k, float(v) if k in ("latitude", "longitude") else int(v) if k in ("width", "height")
                    else str(v))
        except (TypeError, ValueError):
            log.debug("%s: %s: unreadable %s %r; ignored", where, frame.file, k, v)
    frame.answer = _read_answer(im, where)
    failure = im.get("failure")
    if failure is not None:
        frame.failure, frame.detections = str(failure), None
        return frame
    if root is not None and not (root / frame.file).is_file():
        frame.failure, frame.detections = f"file not found under {root}", None
        return frame
    dets = im.get("detections")
    if dets is None:
        frame.failure, frame.detections = "no detections list (and no failure given)", None
        return frame
    if not isinstance(dets, list):
        frame.failure, frame.detections = f"detections is not a list: {type(dets).__name__}", None
        return frame
    out = []
    for j, d in enumerate(dets):
        problem = None
        if not isinstance(d, dict):
            problem = "is not an object"
        else:
            conf = _number(d.get("conf"))
            if conf is None or not -BOX_TOLERANCE <= conf <= 1 + BOX_TOLERANCE:
                problem = f"has conf {d.get('conf')!r}, not a number in [0, 1]"
            else:
                problem = _box_problem(d.get("bbox"), edge_tol=EDGE_TOLERANCE)
        if problem:
            frame.failure, frame.detections = f"detection {j + 1} {problem}", None
            return frame
        cat = cats.get(str(d.get("category")))
        if cat is None:  # the format: categories not listed are "no detection"
            log.debug("%s: %s: detection %d has unlisted category %r; ignored", where, frame.file, j + 1,
                      d.get("category"))
            continue
        det = Detection(cat, min(1.0, max(0.0, conf)), _clamp(d["bbox"]))
        for c in d.get("classifications") or []:
            if not isinstance(c, (list, tuple)) or len(c) < 2 or str(c[0]) not in classes or _number(c[1]) is None:
                frame.failure, frame.detections = f"detection {j + 1} has a bad classification {c!r}", None
                return frame
            name, rank, lineage, common = classes[str(c[0])]
            det.classifications.append(Classification(name, rank, lineage, common, float(c[1])))
        det.classifications.sort(key=lambda c: -c.score)
        det.answer = _read_answer(d, where)
        out.append(det)
    frame.detections = out
    return frame


def read_md_json(path: str | os.PathLike, images_root: str | os.PathLike | None = None
                 ) -> tuple[list[Frame], dict]:
    """Frames from a MegaDetector batch file, and the file's other top-level fields
    (`info`, `detection_categories`, `classification_categories`, …).

    A bad entry fails its own frame (`Frame.failure` says why), never the file: a box outside
    [0, 1] or far past the image edge, a confidence that is not a number, an image missing
    under `images_root`. Boxes within rounding of the edge are clipped to the image."""
    where = str(path)
    try:
        with open(path, "rb") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise InputError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{where}: unreadable ({e})") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise InputError(f"{where}: not a MegaDetector batch file (the top level is not an object)")
    _version(data.get("info"), where)
    raw_cats = data.get("detection_categories")
    if not isinstance(raw_cats, dict):
        raise InputError(f"{where}: no detection_categories")
    cats = {str(k): _CATEGORY_SYNONYMS.get(str(v).strip().lower(), str(v).strip().lower()) for k, v in raw_cats.items()}
    names = data.get("classification_categories") or {}
    descriptions = data.get("classification_category_descriptions") or {}
    if not isinstance(names, dict) or not isinstance(descriptions, dict):
        raise InputError(f"{where}: classification_categories must map ids to names")
    classes = {}
    for k, name in names.items():
        rank, lineage, common = classification_of_description(str(name), descriptions.get(k))
        classes[str(k)] = (str(name), rank, lineage, common)
    images = data.get("images")
    if not isinstance(images, list):
        raise InputError(f"{where}: no images list")
    root = Path(images_root) if images_root is not None else None
    frames = [_read_image(im, i, cats, classes, root, where) for i, im in enumerate(images)]
    meta = {k: v for k, v in data.items() if k != "images"}
    return frames, meta


# ----- writing ------------------------------------------------------------------------------
def _r(v: float, decimals: int | None) -> float | None:
    v = float(v)
    if not math.isfinite(v):
        return None
    return float(round(v, decimals)) if decimals is not None else v


def _write_box(bbox: Sequence[float], decimals: int | None) -> list:
    """A box as written: clipped to the image when it is within rounding of it (a broken box is
    written as it is, for `check_md_json` to report), then rounded without leaving the image."""
    if _box_problem(bbox, edge_tol=EDGE_TOLERANCE) is not None:
        return [_r(v, decimals) for v in bbox]
    x, y, w, h = (_r(v, decimals) for v in _clamp(bbox))
    if x + w > 1.0:
        w = _r(max(0.0, 1.0 - x), decimals)
    if y + h > 1.0:
        h = _r(max(0.0, 1.0 - y), decimals)
    return [x, y, w, h]


def _key(c: Classification | Taxon | str) -> tuple:
    if isinstance(c, str):
        return (c, "", (), "")
    if isinstance(c, Taxon):
        r = c.rank
        name = (c.species or c.ranks[int(r)]) if r is not None else c.common
        return (name, r.label if r is not None else "", lineage_of(c), c.common)
    t = taxon_of(c.lineage, c.common_name)
    return (c.name, c.rank, lineage_of(t), c.common_name)


def _write_answer(out: dict, a: Answer | None, decimals: int | None) -> None:
    if a is None:
        return
    out["prediction"] = a.label
    out["prediction_score"] = _r(a.score, decimals)
    out["prediction_source"] = a.source
    if a.rank:
        out["prediction_rank"] = a.rank
    if a.lineage or a.common_name:
        out["prediction_description"] = description_of(a.lineage, a.common_name)


def _jsonable(v: Any) -> Any:
    """Metadata as JSON can hold it: non-finite numbers -> null, numpy scalars -> numbers, else text."""
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set)):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, (bool, str, int)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if hasattr(v, "item"):  # numpy scalar
        return _jsonable(v.item())
    return str(v)


def _model_name(v: Any) -> str | None:
    if isinstance(v, Mapping):
        v = v.get("id") or v.get("name")
    return None if v in (None, "") else str(v)


def _part(given: Mapping | None, name_keys: tuple[str, ...], time_keys: tuple[str, ...], meta_keys: tuple[str, ...],
          now: str) -> tuple[str, str, dict]:
    """(name, completion time, metadata) of the detector or classifier as the caller describes it.

    The name is the first of `name_keys` given (a model identity {"id": …} gives its id); a
    "model" entry also stays in the metadata, where it may say more (weights hash, …)."""
    rest = dict(given or {})
    name = next((n for n in (_model_name(rest.get(k)) for k in name_keys) if n), None)
    for k in name_keys:
        if k != "model":
            rest.pop(k, None)
    when = next((str(rest[k]) for k in time_keys if rest.get(k)), now)
    meta: dict = {}
    for k in time_keys + meta_keys:
        v = rest.pop(k, None)
        if k in meta_keys and isinstance(v, Mapping):
            meta.update(v)
    meta.update(rest)  # anything else said about it: model identity, vocabulary, hash, decision rule …
    return name or "unknown", when, meta


def _info(detector: Mapping, classifier: Mapping | None, now: str) -> dict:
    info: dict[str, Any] = {"format_version": FORMAT_VERSION}
    name, when, meta = _part(detector, ("name", "detector", "model"), ("completion_time", "detection_completion_time"),
                             ("metadata", "detector_metadata"), now)
    if meta.get("model") == name:
        del meta["model"]
    info["detector"], info["detection_completion_time"] = name, when
    if meta:
        info["detector_metadata"] = _jsonable(meta)
    if classifier is not None:
        name, when, meta = _part(classifier, ("name", "classifier", "model"),
                                 ("completion_time", "classification_completion_time"),
                                 ("metadata", "classifier_metadata"), now)
        meta.setdefault("model", name)
        info["classifier"], info["classification_completion_time"] = name, when
        info["classifier_metadata"] = _jsonable(meta)
    return info


def write_md_json(frames: Sequence[Frame], path: str | os.PathLike, *, detector: Mapping,
                  classifier: Mapping | None = None,
                  categories_from: Sequence[Classification | Taxon | str] | None = None,
                  max_classifications: int = 5, decimals: int | None = 6,
                  extra_info: Mapping | None = None) -> Path:
    """Write frames as a MegaDetector 1.6 batch file (atomically) and return its path.

    `detector`: {"name": file name of the model (MegaDetector tools read its version from it),
    "metadata": {...}, "completion_time": "YYYY-mm-dd HH:MM:SS"}; other keys join the metadata.
    `classifier`: {"name" or "model": model id (or a model identity {"id": …, …}), "vocabulary": …,
    "metadata": {...}, …}: every key but the name and time lands in `classifier_metadata`; None
    for a detector-only file. Metadata is made JSON-safe (NaN -> null). `categories_from`: taxa or labels whose ids are fixed first,
    in that order (e.g. a custom label set, so several files share ids); the run's other
    classifications follow in order of first appearance."""
    now = datetime.now().strftime(_TIME)
    det_ids = dict(_NAME_TO_ID)
    class_ids: dict[tuple, str] = {}
    for c in categories_from or ():
        class_ids.setdefault(_key(c), str(len(class_ids)))
    images = []
    for f in frames:
        im: dict[str, Any] = {"file": str(f.file).replace("\\", "/")}
        if f.failure is not None or f.detections is None:
            im["failure"] = str(f.failure or "not processed")
            im["detections"] = None
        else:
            dets = []
            for d in f.detections:
                if d.category not in det_ids:
                    det_ids[d.category] = str(max(int(k) for k in det_ids) + 1)
                out: dict[str, Any] = {"category": det_ids[d.category], "conf": _r(d.conf, decimals) or 0.0,
                                       "bbox": _write_box(d.bbox, decimals)}
                if d.classifications:
                    ranked = sorted(d.classifications, key=lambda c: -c.score if math.isfinite(c.score) else 1.0)
                    out["classifications"] = [
                        [class_ids.setdefault(_key(c), str(len(class_ids))), _r(c.score, decimals) or 0.0]
                        for c in ranked[:max_classifications]]
                _write_answer(out, d.answer, decimals)
                dets.append(out)
            im["detections"] = dets
        _write_answer(im, f.answer, decimals)
        for k in _CONTEXT:
            v = getattr(f, k)
            if v is not None:
                im[k] = v
        images.append(im)
    info = _info(detector, classifier, now)
    info.update(extra_info or {})
    doc: dict[str, Any] = {"info": info, "detection_categories": {v: k for k, v in det_ids.items()}}
    if classifier is not None or class_ids:
        doc["classification_categories"] = {i: (k[0] or k[3] or "unknown") for k, i in class_ids.items()}
        doc["classification_category_descriptions"] = {i: description_of(k[2], k[3]) for k, i in class_ids.items()}
    doc["images"] = images
    path = Path(path)
    write_atomic(path, (json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8"))
    return path


# ----- checking -----------------------------------------------------------------------------
def check_md_json(path: str | os.PathLike, limit: int = 100) -> list[str]:
    """Problems with a batch file by our stricter reading of format 1.6 ([] when none).

    Beyond MegaDetector's validator: the version is "1.6"; every box is four numbers in [0, 1]
    that stay inside the image (x+w <= 1, y+h <= 1); confidences and scores lie in [0, 1];
    every category referenced exists; classifications are sorted best first; descriptions
    name the same ids as the categories."""
    problems: list[str] = []

    def bad(msg: str) -> None:
        problems.append(msg)

    try:
        with open(path, "rb") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as e:
        return [f"unreadable: {e}"]
    if not isinstance(data, dict):
        return ["the top level is not an object"]
    info = data.get("info")
    if not isinstance(info, dict):
        bad("no info object")
    elif info.get("format_version") != FORMAT_VERSION:
        bad(f"info.format_version is {info.get('format_version')!r}, expected the string {FORMAT_VERSION!r}")
    cats = data.get("detection_categories")
    if not isinstance(cats, dict) or not cats:
        bad("no detection_categories")
        cats = {}
    for k, v in cats.items():
        if not re.fullmatch(r"\d+", str(k)):
            bad(f"detection category id {k!r} is not a string-formatted non-negative integer")
        if not isinstance(v, str) or not v.strip():
            bad(f"detection category {k!r} has a blank name")
    classes = data.get("classification_categories", {})
    if not isinstance(classes, dict):
        bad("classification_categories is not an object")
        classes = {}
    for k, v in classes.items():
        if not re.fullmatch(r"\d+", str(k)):
            bad(f"classification category id {k!r} is not a string-formatted non-negative integer")
        if not isinstance(v, str) or not v.strip():
            bad(f"classification category {k!r} has a blank name")
    descs = data.get("classification_category_descriptions")
    if descs is not None and (not isinstance(descs, dict) or set(descs) != set(classes)):
        bad("classification_category_descriptions does not name the same ids as classification_categories")
    images = data.get("images")
    if not isinstance(images, list):
        return problems + ["no images list"]
    for i, im in enumerate(images):
        if len(problems) >= limit:
            break
        if not isinstance(im, dict) or not isinstance(im.get("file"), str):
            bad(f"images[{i}]: no file")
            continue
        at = f"images[{i}] ({im['file']})"
        if im.get("failure") is not None:
            if not isinstance(im["failure"], str):
                bad(f"{at}: failure is not a string")
            if im.get("detections") is not None:
                bad(f"{at}: a failure with a non-null detections list")
            continue
        dets = im.get("detections")
        if not isinstance(dets, list):
            bad(f"{at}: detections is not a list")
            continue
        for j, d in enumerate(dets):
            dat = f"{at} detection {j + 1}"
            if not isinstance(d, dict):
                bad(f"{dat}: not an object")
                continue
            if str(d.get("category")) not in cats or not isinstance(d.get("category"), str):
                bad(f"{dat}: category {d.get('category')!r} is not a string id in detection_categories")
            conf = d.get("conf")
            if not isinstance(conf, float) or not 0.0 <= conf <= 1.0:
                bad(f"{dat}: conf {conf!r} is not a float in [0, 1]")
            problem = _box_problem(d.get("bbox"))
            if problem:
                bad(f"{dat}: {problem}")
            cl = d.get("classifications")
            if cl is None:
                continue
            if not isinstance(cl, list):
                bad(f"{dat}: classifications is not a list")
                continue
            scores = []
            for c in cl:
                if not isinstance(c, list) or len(c) != 2 or not isinstance(c[0], str) or c[0] not in classes:
                    bad(f"{dat}: classification {c!r} is not [id in classification_categories, score]")
                    continue
                s = _number(c[1])
                if s is None or not 0.0 <= s <= 1.0:
                    bad(f"{dat}: classification score {c[1]!r} is not in [0, 1]")
                    continue
                scores.append(s)
            if any(a < b for a, b in zip(scores, scores[1:])):
                bad(f"{dat}: classifications are not sorted by score, best first")
    if len(problems) >= limit:
        problems.append(f"(stopped after {limit} problems)")
    return problems

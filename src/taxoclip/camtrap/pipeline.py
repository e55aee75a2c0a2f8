"""Camera-trap frames -> detections -> classified crops -> one answer per frame (and per event).

Crops are classified over the open Tree-of-Life vocabulary (or a subset), and every answer
comes from `taxoclip.decide`'s rule: each box is answered at its deepest confident rank with
the same thresholds, location prior and calibration as a photo; the frame's answer is like
SpeciesNet's ensemble: `blank` (no detection above the threshold), `human` or `vehicle` (the
most confident detection is one), else the animal box answered deepest (then most surely),
or `animal` when no rank of any box is sure. With events, frames of one camera close in time
are decided together from their chosen boxes' evidence.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Sequence

import pyarrow as pa

from ..decide import Policy, decide_tables
from ..decide.scores import LEVELS, SEP, label_batch, score_batch
from ..errors import InputError
from ..taxonomy import RANKS
from .results import Answer, Classification, Frame

__all__ = ["CropOptions", "crop_box", "classify_frames", "detect_frames", "frame_answer", "load_frame_image",
           "with_threshold"]

log = logging.getLogger(__name__)
_DEEP = {level: i for i, level in enumerate(LEVELS)}


@dataclass
class CropOptions:
    """Which detections are classified and how they are cut out.

    Square crops around the box, grown by `padding` (a fraction of the box's longer side) and
    clipped to the frame, as MegaDetector's classification step cuts them (`--square-crops`);
    boxes whose crop would be smaller than `min_size` pixels are left unclassified."""

    # detections below this are not classified (nor counted for the frame); None: the detector's
    # typical threshold (its metadata, or a MegaDetector file's), MegaDetector's 0.2 when unknown
    threshold: float | None = None
    padding: float = 0.05
    min_size: int = 16
    square: bool = True


def with_threshold(options: CropOptions, detector_metadata: dict | None) -> CropOptions:
    """The options with their threshold set: the detector's typical one where none was given."""
    from .detector import thresholds_of

    return options if options.threshold is not None else replace(options,
                                                                  threshold=thresholds_of(detector_metadata)[0])


def crop_box(image, bbox: Sequence[float], options: CropOptions):
    """The crop of a normalised [x, y, w, h] box, or None when it is too small."""
    W, H = image.size
    x, y, w, h = bbox
    cx, cy = (x + w / 2) * W, (y + h / 2) * H
    bw, bh = w * W, h * H
    if options.square:
        bw = bh = max(bw, bh)
    pad = options.padding * max(bw, bh)
    left, top = max(0, int(round(cx - bw / 2 - pad))), max(0, int(round(cy - bh / 2 - pad)))
    right, bottom = min(W, int(round(cx + bw / 2 + pad))), min(H, int(round(cy + bh / 2 + pad)))
    if right - left < options.min_size or bottom - top < options.min_size:
        return None
    return image.crop((left, top, right, bottom))


def load_frame_image(path: str):
    """The frame as RGB, or an InputError saying why it cannot be read."""
    from ..io.images import decode_image

    return decode_image(path)


def detect_frames(paths: Sequence[str], detector, *, threshold: float | None = None, batch: int = 8,
                  root: str | None = None) -> Iterator[Frame]:
    """Run the detector over image files, keeping detections from `threshold` (default: the
    detector's conservative threshold); an unreadable frame becomes a Frame with a failure."""
    from .detector import thresholds_of

    if threshold is None:
        threshold = thresholds_of(getattr(detector, "metadata", None))[1]
    for s in range(0, len(paths), batch):
        part = paths[s:s + batch]
        frames, images = [], []
        for p in part:
            name = os.path.relpath(p, root) if root else p
            try:
                img = load_frame_image(p)
            except InputError as e:
                frames.append(Frame(name, detections=None, failure=_reason(e, p)))
                continue
            frames.append(Frame(name, width=img.size[0], height=img.size[1]))
            images.append(img)
        found = iter(_detect(detector, images, threshold) if images else [])
        for f in frames:
            if f.failure is None:
                dets = next(found)
                if isinstance(dets, InputError):
                    f.failure, f.detections = str(dets), None
                else:
                    f.detections = list(dets)
            yield f


def _detect(detector, images: list, threshold: float) -> list:
    """Detections per frame; when the detector fails on a batch, frame by frame, so a frame it
    cannot take gets its error (an InputError in its place) and the others their detections."""
    try:
        return list(detector.detect(images, threshold=threshold))
    except InputError as e:
        if len(images) == 1:
            return [e]
    out: list = []
    for im in images:
        try:
            out.extend(detector.detect([im], threshold=threshold))
        except InputError as e:
            out.append(e)
    return out


def _reason(error: Exception, path: str) -> str:
    """The error without the path it starts with (the frame's entry already names the file)."""
    text = str(error)
    return text[len(path) + 2:] if text.startswith(f"{path}: ") else text


def _crops(frames: Sequence[Frame], root: str | None, options: CropOptions):
    """(frame index, detection, crop image) for each detection to classify; unreadable frames fail."""
    out = []
    for i, f in enumerate(frames):
        if f.failure is not None or not f.detections:
            continue
        animals = [d for d in f.detections if d.category == "animal" and d.conf >= options.threshold]
        if not animals:
            continue
        path = os.path.join(root, f.file) if root and not os.path.isabs(f.file) else f.file
        try:
            img = load_frame_image(path)
        except InputError as e:
            f.failure, f.detections = _reason(e, path), None
            continue
        for d in animals:
            crop = crop_box(img, d.bbox, options)
            if crop is not None:
                out.append((i, d, crop))
    return out


def classify_frames(frames: list[Frame], classifier, *, root: str | None = None, policy: Policy | None = None,
                    options: CropOptions | None = None, k: int = 5, events: bool = False, gap: float = 60.0,
                    batch: int = 64, progress: Callable[[int, int], None] | None = None) -> list[Frame]:
    """Classify every animal detection above the threshold and answer each frame (in place).

    `classifier` is a TreeOfLifeClassifier (any vocabulary, subset or prototypes) or a
    CustomLabelsClassifier (or its binning variant); labels are decided by `decide_labels`."""
    options = with_threshold(options or CropOptions(), None)
    policy = policy or Policy()
    labels = _labels_only(classifier)
    crops = _crops(frames, root, options)
    tables, owners = [], []
    for s in range(0, len(crops), batch):
        part = crops[s:s + batch]
        names = [f"{frames[i].file}#{s + n}" for n, (i, _, _) in enumerate(part)]
        tables.append(_score(classifier, names, [c for _, _, c in part], max(k, 20), labels))
        owners.extend(part)
        if progress:
            progress(min(s + batch, len(crops)), len(crops))
    table = pa.concat_tables(tables) if tables else None
    row_of: dict[int, int] = {}  # id(detection) -> its scores row, for event fusion
    if table is not None:
        [(_, decisions)] = list(decide_tables([table], policy, labels=labels))
        species = table.column("species").to_pylist()
        probs = table.column("species_p").to_pylist()
        commons = table.column("common_name").to_pylist()
        for n, (_, det, _) in enumerate(owners):
            det.classifications = [_classification(key, p, c, labels) for key, p, c in
                                   zip(species[n][:k], probs[n][:k], commons[n][:k])]
            det.answer = _with_lineage(_answer(decisions.iloc[n]), det.classifications)
            row_of[id(det)] = n
    for f in frames:
        f.answer = frame_answer(f, options.threshold)
    if events and table is not None:
        _event_answers(frames, table, row_of, policy, gap, labels)
    return frames


def _labels_only(classifier) -> bool:
    """Whether the classes have no ranks at all: custom labels (`--cls`, `--bins`), or a vocabulary
    (e.g. prototypes of classes named only by a common name) without a taxonomy."""
    if hasattr(classifier, "classes"):
        return True
    from ..textbank import RANK_COLUMNS

    ranks = classifier.bank.table[[c for c in RANK_COLUMNS if c in classifier.bank.table.columns]]
    return not ranks.astype(str).ne("").to_numpy().any()


def _score(classifier, names: list[str], crops: list, n: int, labels: bool) -> pa.Table:
    """Score rows (`taxoclip.decide.scores`) for one batch of crops."""
    if hasattr(classifier, "classes"):  # custom labels: each crop's probability over the labels
        preds = list(classifier.predict_iter(crops, k=n, batch_size=len(crops)))
        return label_batch(names, [[r["classification"] for r in p.rows] for p in preds],
                           [[r["score"] for r in p.rows] for p in preds],
                           {i: p.error for i, p in enumerate(preds) if p.error})
    [(_, masses, errors)] = list(classifier.masses_iter(crops, n, 5, batch_size=len(crops)))
    if not labels:
        return score_batch(classifier.bank, names, masses, errors)
    from ..textbank import take_values  # here: this module is imported without torch

    row_p, row_i, _ = masses  # the readable crops' best rows, in order; a class is its common name
    common = classifier.bank.table["common_name"]
    found = iter(zip(row_i.numpy(), row_p.tolist()))
    rows = [(None, []) if i in errors else next(found) for i in range(len(names))]
    return label_batch(names, [[] if ix is None else list(map(str, take_values(common, ix))) for ix, _ in rows],
                       [p for _, p in rows], errors)


def _classification(key: str, p: float, common: str, labels: bool) -> Classification:
    if labels:
        return Classification(key, "", (), "", float(p))
    parts = tuple(key.split(SEP))
    depth = max((i for i, x in enumerate(parts) if x), default=-1)
    if depth < 0:  # a class without ranks among taxa: known by its common name
        return Classification(common, "", (), "", float(p))
    name = f"{parts[5]} {parts[6]}" if depth == 6 and parts[5] else parts[depth]
    return Classification(name, RANKS[depth], parts[:depth + 1], common, float(p))


def _answer(row) -> Answer:
    if not row["prediction"] or row["prediction_source"] in ("", "none"):  # no rank (no label) sure enough
        return Answer("animal", "", float("nan"), "none")
    score = min(1.0, float(row["prediction_score"]))  # masses summed in float32 can pass 1 by rounding
    return Answer(row["prediction"], row["prediction_rank"] or "", score, row["prediction_source"])


def _with_lineage(a: Answer, candidates: Sequence[Classification]) -> Answer:
    """A decision (a name at a rank) with the lineage and common name its candidates give it."""
    from .mdjson import answer_taxon, lineage_of

    t = answer_taxon(a, candidates) if a.rank else None
    return a if t is None else replace(a, lineage=lineage_of(t), common_name=t.common)


def frame_answer(frame: Frame, threshold: float) -> Answer:
    """SpeciesNet-style frame answer from its detections (see the module docstring)."""
    if frame.failure is not None:
        return Answer("", "", float("nan"), "none")
    kept = [d for d in frame.detections or [] if d.conf >= threshold]
    if not kept:
        top = max((d.conf for d in frame.detections or []), default=0.0)
        return Answer("blank", "", 1.0 - top, "detector")
    best = max(kept, key=lambda d: d.conf)
    if best.category in ("person", "vehicle"):
        return Answer("human" if best.category == "person" else "vehicle", "", best.conf, "detector")
    answered = [d for d in kept if d.category == "animal" and d.answer is not None
                and d.answer.source not in ("", "none")]
    if not answered:
        return Answer("animal", "", best.conf, "detector")
    # the deepest rank (a custom label counts as the deepest), then the surest
    chosen = min(answered, key=lambda d: (_DEEP.get(d.answer.rank, 0), -d.answer.score))
    return chosen.answer


def _event_answers(frames: list[Frame], table: pa.Table, row_of: dict[int, int], policy: Policy,
                   gap: float, labels: bool = False) -> None:
    """Frames of one camera close in time: fuse their chosen boxes' evidence and decide once."""
    from ..decide.scores import CONTEXT_COLUMNS

    rows, who = [], []
    for i, f in enumerate(frames):
        if f.answer is None or f.answer.label in ("", "blank", "human", "vehicle"):
            continue
        dets = [d for d in f.detections or [] if id(d) in row_of]
        if not dets:
            continue
        chosen = next((d for d in dets if d.answer is f.answer), max(dets, key=lambda d: d.conf))
        rows.append(row_of[id(chosen)])
        who.append(i)
    if not rows:
        return
    sub = table.take(pa.array(rows))
    ctx = {"deployment": [frames[i].deployment or os.path.dirname(frames[i].file) for i in who],
           "datetime": [frames[i].datetime for i in who],
           "latitude": [frames[i].latitude for i in who], "longitude": [frames[i].longitude for i in who]}
    for c, values in ctx.items():
        sub = sub.set_column(sub.schema.get_field_index(c), c, pa.array(values, type=CONTEXT_COLUMNS[c]))
    sub = sub.set_column(0, "file_name", pa.array([frames[i].file for i in who]))
    [(_, decisions)] = list(decide_tables([sub], policy, events=True, gap=gap, labels=labels))
    for i, row in zip(who, decisions.to_dict("records")):
        frames[i].event = row["event"]
        if row["prediction_source"] == "event":  # the event's evidence changed the frame's answer
            answer = Answer(row["prediction"] or "animal", row["prediction_rank"] or "",
                            min(1.0, float(row["prediction_score"])), "event")
            frames[i].answer = _with_lineage(answer, [c for d in frames[i].detections or []
                                                      for c in d.classifications])

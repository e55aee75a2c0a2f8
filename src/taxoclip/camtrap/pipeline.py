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
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import pyarrow as pa

from ..decide import Policy, decide_tables
from ..decide.scores import LEVELS, SEP
from ..errors import InputError
from .results import Answer, Classification, Frame

__all__ = ["CropOptions", "crop_box", "classify_frames", "detect_frames", "frame_answer", "load_frame_image"]

log = logging.getLogger(__name__)
_DEEP = {level: i for i, level in enumerate(LEVELS)}


@dataclass
class CropOptions:
    """Which detections are classified and how they are cut out.

    Square crops around the box, grown by `padding` (a fraction of the box's longer side) and
    clipped to the frame, as MegaDetector's classification step cuts them (`--square-crops`);
    boxes whose crop would be smaller than `min_size` pixels are left unclassified."""

    threshold: float = 0.2  # detections below this are not classified (nor counted for the frame)
    padding: float = 0.05
    min_size: int = 16
    square: bool = True


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


def detect_frames(paths: Sequence[str], detector, *, threshold: float = 0.1, batch: int = 8,
                  root: str | None = None) -> Iterator[Frame]:
    """Run the detector over image files; an unreadable frame becomes a Frame with a failure."""
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
        found = iter(detector.detect(images, threshold=threshold) if images else [])
        for f in frames:
            if f.failure is None:
                f.detections = list(next(found))
            yield f


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

    `classifier` is a TreeOfLifeClassifier (any vocabulary or subset)."""
    from ..decide.scores import score_batch

    options = options or CropOptions()
    policy = policy or Policy()
    crops = _crops(frames, root, options)
    tables, owners = [], []
    for s in range(0, len(crops), batch):
        part = crops[s:s + batch]
        for names, masses, errors in classifier.masses_iter([c for _, _, c in part], max(k, 20), 5,
                                                            batch_size=len(part)):
            tables.append(score_batch(classifier.bank, [f"{frames[i].file}#{n}" for n, (i, _, _) in
                                                        enumerate(part)], masses, errors))
        owners.extend(part)
        if progress:
            progress(min(s + batch, len(crops)), len(crops))
    table = pa.concat_tables(tables) if tables else None
    row_of: dict[int, int] = {}  # id(detection) -> its scores row, for event fusion
    if table is not None:
        [(_, decisions)] = list(decide_tables([table], policy))
        species = table.column("species").to_pylist()
        probs = table.column("species_p").to_pylist()
        commons = table.column("common_name").to_pylist()
        for n, (_, det, _) in enumerate(owners):
            det.classifications = [_classification(key, p, c) for key, p, c in
                                   zip(species[n][:k], probs[n][:k], commons[n][:k])]
            det.answer = _answer(decisions.iloc[n])
            row_of[id(det)] = n
    for f in frames:
        f.answer = frame_answer(f, options.threshold)
    if events and table is not None:
        _event_answers(frames, table, row_of, policy, gap)
    return frames


def _classification(key: str, p: float, common: str) -> Classification:
    parts = tuple(key.split(SEP))
    name = f"{parts[5]} {parts[6]}" if len(parts) == 7 and parts[5] and parts[6] else next(
        (x for x in reversed(parts) if x), "")
    return Classification(name, "species", parts, common, float(p))


def _answer(row) -> Answer:
    rank = row["prediction_rank"] or ""
    if not rank:
        return Answer("animal", "", float("nan"), "none")
    return Answer(row["prediction"], rank, float(row["prediction_score"]), row["prediction_source"])


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
    answered = [d for d in kept if d.category == "animal" and d.answer is not None and d.answer.rank]
    if not answered:
        return Answer("animal", "", best.conf, "detector")
    chosen = min(answered, key=lambda d: (_DEEP[d.answer.rank], -d.answer.score))
    return chosen.answer


def _event_answers(frames: list[Frame], table: pa.Table, row_of: dict[int, int], policy: Policy,
                   gap: float) -> None:
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
    [(_, decisions)] = list(decide_tables([sub], policy, events=True, gap=gap))
    for i, row in zip(who, decisions.to_dict("records")):
        frames[i].event = row["event"]
        if row["prediction_source"] == "event":
            frames[i].answer = Answer(row["prediction"], row["prediction_rank"], float(row["prediction_score"]),
                                      "event")

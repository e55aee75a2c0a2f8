"""Camera traps: detect animals, people and vehicles, classify every animal over the open
Tree-of-Life vocabulary, answer each frame (and event), and read/write the ecosystem's files
(MegaDetector batch JSON, Camtrap DP, Darwin Core).

    from taxoclip.camtrap import run_images
    frames = run_images(["sd-card/"], out="results.json")
"""
from __future__ import annotations

import os
from typing import Sequence

from .pipeline import CropOptions, classify_frames, detect_frames, frame_answer
from .results import DETECTION_CATEGORIES, Answer, Classification, Detection, Frame

__all__ = ["Frame", "Detection", "Classification", "Answer", "DETECTION_CATEGORIES", "CropOptions",
           "detect_frames", "classify_frames", "frame_answer", "run_images", "classify_md", "with_context"]


def with_context(frames: list[Frame], root: str | None, context=None) -> list[Frame]:
    """Fill each frame's time, place and deployment from `context` rows or its EXIF (and folder)."""
    from ..decide.context import photo_context

    paths = [os.path.join(root, f.file) if root and not os.path.isabs(f.file) else f.file for f in frames]
    ctx = photo_context(paths, context).to_dict("records")
    for f, c in zip(frames, ctx):
        f.datetime = f.datetime or _text(c.get("datetime"))
        f.latitude = f.latitude if f.latitude is not None else _number(c.get("latitude"))
        f.longitude = f.longitude if f.longitude is not None else _number(c.get("longitude"))
        f.deployment = f.deployment or _text(c.get("deployment")) or (os.path.dirname(f.file) or ".")
    return frames


def _text(v):
    return None if v is None or (isinstance(v, float) and v != v) else str(v)


def _number(v):
    return None if v is None or (isinstance(v, float) and v != v) else float(v)


def run_images(images: Sequence[str], classifier, detector, *, policy=None, options: CropOptions | None = None,
               detection_threshold: float | None = None, context=None, events: bool = False, gap: float = 60.0,
               progress=None) -> tuple[list[Frame], str | None]:
    """Detect and classify image files (folders searched recursively; a Camtrap DP package's
    `datapackage.json` or folder brings its local media with their times and deployments).
    Detections are kept from `detection_threshold` (default: the detector's conservative
    threshold) and classified from `options.threshold` (default: its typical threshold).
    Returns (frames, their root): frame names are relative to the folder given (or the common
    folder of the inputs), as MegaDetector writes them."""
    import logging

    from ..errors import InputError
    from ..io.images import find_images
    from .detector import thresholds_of
    from .pipeline import with_threshold

    options = with_threshold(options or CropOptions(), detector.metadata)
    if detection_threshold is None:
        detection_threshold = min(thresholds_of(detector.metadata)[1], options.threshold)

    packaged: dict[str, Frame] = {}
    plain = []
    for item in images:
        pkg = item if os.path.basename(item) == "datapackage.json" else os.path.join(item, "datapackage.json")
        if os.path.isfile(pkg):
            from .camtrapdp import read_camtrap_dp

            media, _ = read_camtrap_dp(pkg)
            remote = [m for m in media if "://" in m.file]
            if remote:
                logging.getLogger(__name__).warning("%s: %d media are URLs, not fetched (only local files are run)",
                                                    pkg, len(remote))
            packaged.update({os.path.abspath(m.file): m for m in media if "://" not in m.file})
        else:
            plain.append(item)
    refs, problems = find_images(plain) if plain else ([], [])
    paths = [os.path.abspath(r.path) for r in refs if r.path and r.offset < 0] + list(packaged)
    if not paths:
        raise InputError("; ".join(problems) or "no images found")
    folders = [os.path.abspath(i) for i in images if os.path.isdir(i)]
    root = folders[0] if len(folders) == len(images) == 1 else \
        os.path.commonpath([os.path.dirname(p) for p in paths])
    frames = list(detect_frames(paths, detector, threshold=detection_threshold, root=root))
    for f, path in zip(frames, paths):
        known = packaged.get(path)
        if known is not None:
            f.datetime, f.deployment = known.datetime, known.deployment
            f.latitude, f.longitude = known.latitude, known.longitude
    with_context(frames, root, context)
    classify_frames(frames, classifier, root=root, policy=policy, options=options, events=events, gap=gap,
                    progress=progress)
    return frames, root


def classify_md(md, root: str, classifier, *, policy=None, options: CropOptions | None = None,
                context=None, events: bool = False, gap: float = 60.0, progress=None) -> tuple[list[Frame], dict]:
    """Classify the detections of a MegaDetector batch file (paths relative to `root`) from
    `options.threshold` (default: the file's `typical_detection_threshold`, else 0.2). `md` is
    the file's path, or what `mdjson.read_md_json` read from it."""
    from .mdjson import read_md_json
    from .pipeline import with_threshold

    frames, meta = read_md_json(md, images_root=root) if isinstance(md, (str, os.PathLike)) else md
    info = meta.get("info") if isinstance(meta.get("info"), dict) else {}
    options = with_threshold(options or CropOptions(), info.get("detector_metadata"))
    with_context(frames, root, context)
    classify_frames(frames, classifier, root=root, policy=policy, options=options, events=events, gap=gap,
                    progress=progress)
    return frames, meta

"""What a camera-trap run knows about each frame: detections, their classifications, an answer.

Every reader (MegaDetector batch JSON, Camtrap DP) produces these and every writer (MD JSON,
Camtrap DP, Darwin Core) consumes them, so formats convert through one model.
Boxes are MegaDetector's: normalised `[x_min, y_min, width, height]` in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DETECTION_CATEGORIES", "Classification", "Detection", "Frame", "Answer"]

# MegaDetector's category ids and names (string ids, as in its batch JSON)
DETECTION_CATEGORIES = {"1": "animal", "2": "person", "3": "vehicle"}


@dataclass
class Classification:
    """One candidate label for a detection: a taxon (lineage down to its rank) or a custom label."""

    name: str  # binomial, higher-rank name, or custom label
    rank: str  # species … kingdom, or "" for custom labels
    lineage: tuple[str, ...]  # kingdom … (to `rank`); () for custom labels
    common_name: str
    score: float


@dataclass
class Answer:
    """A decision (for a detection or a whole frame) and where it came from."""

    label: str  # a taxon name, or "blank", "human", "vehicle", "animal"
    rank: str  # species … kingdom; "" for blank/human/vehicle/animal
    score: float
    source: str  # detector, model, rollup, location prior, event, none
    lineage: tuple[str, ...] = ()
    common_name: str = ""


@dataclass
class Detection:
    category: str  # "animal", "person", "vehicle"
    conf: float
    bbox: tuple[float, float, float, float]  # x, y, w, h, normalised
    classifications: list[Classification] = field(default_factory=list)  # best first
    answer: Answer | None = None


@dataclass
class Frame:
    file: str  # as given (relative to the image root for MD JSON)
    detections: list[Detection] | None = field(default_factory=list)  # None with a failure
    failure: str | None = None
    width: int | None = None
    height: int | None = None
    datetime: str | None = None  # ISO 8601
    deployment: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    answer: Answer | None = None  # the frame-level answer (blank, human, vehicle or a taxon)
    event: str | None = None

"""What a resumable run did: parts found done, parts computed, images and errors, and how fast
it answered once the first answer came (start-up apart: Ray's is tens of seconds on a small
machine, a fixed cost that a long run amortises)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["RunReport"]


@dataclass
class RunReport:
    parts_total: int = 0
    parts_skipped: int = 0  # done by an earlier run of the same command
    parts_computed: int = 0
    images: int = 0
    errors: int = 0
    first_errors: list = field(default_factory=list)  # (file name, error) of the first ten
    problems: list = field(default_factory=list)  # inputs that held no image
    started: float = field(default_factory=time.monotonic)
    first_answer: float | None = None  # when the first batch's answers came
    last_answer: float | None = None
    first_batch: int = 0  # images answered with the first one (they arrive within microseconds)

    @classmethod
    def start(cls, parts) -> "RunReport":
        done = len(parts.done())
        return cls(parts_total=parts.n_parts, parts_skipped=done)

    def count(self, image_rows: list[dict]) -> None:
        now = time.monotonic()
        if self.first_answer is None:
            self.first_answer = now
        if now - self.first_answer < 0.01:
            self.first_batch += 1
        self.last_answer = now
        self.images += 1
        err = image_rows[0].get("error") if image_rows else None
        if err:
            self.errors += 1
            if len(self.first_errors) < 10:
                self.first_errors.append((image_rows[0].get("file_name"), err))

    @property
    def startup_s(self) -> float | None:
        """Seconds from the start of the run to its first answer."""
        return None if self.first_answer is None else self.first_answer - self.started

    @property
    def images_per_s(self) -> float | None:
        """Throughput once answers flow: the images after the first batch over the time they took."""
        span = (self.last_answer or 0) - (self.first_answer or 0)
        return (self.images - self.first_batch) / span if span > 0 else None

    def summary(self) -> str:
        text = (f"{self.parts_computed} of {self.parts_total} parts computed, {self.parts_skipped} already done; "
                f"{self.images} images, {self.errors} could not be read")
        if self.startup_s is not None:
            text += f"; first answers after {self.startup_s:.1f} s"
        if self.images_per_s is not None:
            text += f", then {self.images_per_s:.1f} images/s"
        return text

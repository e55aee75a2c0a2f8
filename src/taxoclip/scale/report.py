"""What a resumable run did: parts found done, parts computed, images and errors."""
from __future__ import annotations

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

    @classmethod
    def start(cls, parts) -> "RunReport":
        done = len(parts.done())
        return cls(parts_total=parts.n_parts, parts_skipped=done)

    def count(self, image_rows: list[dict]) -> None:
        self.images += 1
        err = image_rows[0].get("error") if image_rows else None
        if err:
            self.errors += 1
            if len(self.first_errors) < 10:
                self.first_errors.append((image_rows[0].get("file_name"), err))

    def summary(self) -> str:
        return (f"{self.parts_computed} of {self.parts_total} parts computed, {self.parts_skipped} already done; "
                f"{self.images} images, {self.errors} could not be read")

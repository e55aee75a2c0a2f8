"""The local engine: a run's unfinished parts on this machine, with the single-machine loader.

Decoding starts before the model loads (as in `taxoclip predict`); batches run across part
boundaries so the model never waits, and each part is committed the moment its last image is done.
"""
from __future__ import annotations

from typing import Iterable, Iterator

from ..io.images import ImageRef
from .parts import PartDir
from .report import RunReport

__all__ = ["run_local", "commit_in_parts"]


def run_local(parts: PartDir, *, device: str = "auto", batch_size: int | None = None, workers: int | None = None,
              progress: bool | None = None) -> RunReport:
    """Compute every part of `parts` that is not done yet."""
    from .. import classify

    report = RunReport.start(parts)
    pending = parts.pending()
    if not pending:
        return report
    task = parts.task
    refs = [r for i in pending for r in parts.part_refs(i)]
    loader, _ = classify.start_loader(refs, model=task.model, pretrained=task.pretrained, device=device,
                                      precision=task.precision, batch_size=batch_size, workers=workers)
    runner = task.open(device, loader.batch_size)

    def per_image() -> Iterator[tuple[ImageRef, list[dict]]]:
        for batch in loader:
            yield from zip(batch.refs, runner.rows(batch))

    commit_in_parts(parts, pending, per_image(), report, progress)
    return report


def commit_in_parts(parts: PartDir, pending: list[int], results: Iterable[tuple[ImageRef, list[dict]]],
                    report: RunReport, progress: bool | None = None) -> None:
    """Collect (image, rows) results arriving in input order into the pending parts, committing
    each as soon as it is complete (both engines end in this loop)."""
    from tqdm.auto import tqdm

    total = sum(len(parts.part_refs(i)) for i in pending)
    queue = iter(pending)
    current = next(queue)
    expected, rows, seen = len(parts.part_refs(current)), [], 0
    with tqdm(total=total, unit="img", disable=None if progress is None else not progress, dynamic_ncols=True,
              leave=False) as bar:
        for ref, image_rows in results:
            rows.extend(image_rows)
            report.count(image_rows)
            seen += 1
            bar.update(1)
            if seen == expected:
                parts.write(current, rows)
                report.parts_computed += 1
                current = next(queue, None)
                if current is None:
                    break
                expected, rows, seen = len(parts.part_refs(current)), [], 0
    if current is not None:
        raise RuntimeError(f"{parts.path}: the engine stopped before part {current} was complete")

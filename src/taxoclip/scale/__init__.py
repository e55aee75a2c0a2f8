"""Engines: running a task over many inputs, resumably, on this machine or on a Ray cluster.

    from taxoclip.scale import PredictTask, run, merge
    report = run(PredictTask(rank="genus"), ["photos/"], "out/", engine="ray")
    merge("out/", "predictions.csv")

Both engines write the same Parquet parts (`parts`), so a run started on one can be finished
on the other; re-running a killed run's command computes only the parts it had not finished.
"""
from __future__ import annotations

import os
from typing import Iterable

from ..errors import InputError
from .parts import DEFAULT_PART_SIZE, PartDir, is_part_dir_target, merge
from .report import RunReport
from .tasks import EmbedTask, PredictTask, Task

__all__ = ["run", "merge", "PredictTask", "EmbedTask", "Task", "PartDir", "RunReport", "ENGINES",
           "DEFAULT_PART_SIZE", "is_part_dir_target"]

ENGINES = ("local", "ray")


def run(task: Task, inputs: Iterable[str | os.PathLike], output: str | os.PathLike, *, engine: str = "local",
        part_size: int = DEFAULT_PART_SIZE, device: str = "auto", batch_size: int | None = None,
        workers: int | None = None, address: str | None = None, num_workers: int | None = None,
        gpus_per_worker: float = 0, object_store_memory: int | None = None,
        progress: bool | None = None) -> RunReport:
    """Compute `task` over `inputs` into the parts directory `output` (finishing an earlier run
    of the same command there). `workers` are the local engine's decoding processes;
    `address`, `num_workers` (model actors) and `gpus_per_worker` are the Ray engine's."""
    import time

    from ..io.images import find_images

    started = time.monotonic()
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    refs, problems = find_images(inputs)
    if not refs:
        raise InputError("; ".join(problems) or "no images given")
    if engine == "local":
        from .local import run_local

        parts = PartDir.open(output, task, refs, part_size=part_size)
        report = run_local(parts, device=device, batch_size=batch_size, workers=workers, progress=progress)
    else:
        from concurrent.futures import ThreadPoolExecutor

        from .ray_engine import ray_session, run_ray

        # the parts open (inputs listed and hashed, the model's files found) while Ray starts
        with ThreadPoolExecutor(1) as pool:
            opening = pool.submit(PartDir.open, output, task, refs, part_size=part_size)
            with ray_session(address, object_store_memory=object_store_memory):
                report = run_ray(opening.result(), num_workers=num_workers, gpus_per_worker=gpus_per_worker,
                                 batch_size=batch_size, progress=progress)
    report.problems, report.started = problems, started  # start-up counts the engine's (Ray's) own
    return report

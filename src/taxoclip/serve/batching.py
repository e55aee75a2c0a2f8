"""`Batcher`: requests from many clients run through the model together.

One photo per call would scan the whole vocabulary once per photo (300K rows: ~25 ms alone)
and run the image tower at batch size 1; gathered into batches they cost what the offline
CLI's batches cost. Requests wait in one bounded queue (a full queue is refused at once, so
a flood cannot grow memory), and one thread runs batches: torch uses the cores inside it.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import torch

__all__ = ["Batcher", "Job", "QueueFull"]

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """The queue holds its maximum of photos: the caller should retry later."""


@dataclass
class Job:
    """Some photos of one request, and how to score them (jobs with equal keys are scored together)."""

    pixels: torch.Tensor  # [n, 3, H, W]
    key: Hashable
    future: Future = field(default_factory=Future)
    queued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Gather jobs into batches of up to `max_batch` photos, waiting at most `max_wait_s` for more.

    `run(jobs)` does the work for one batch and returns one result per job (or raises: every
    job of the batch then fails with that error). `on_batch(n_photos, n_jobs)` observes.
    """

    def __init__(self, run: Callable[[list[Job]], list[Any]], *, max_batch: int = 64, max_wait_s: float = 0.025,
                 max_queue: int = 512, on_batch: Callable[[int, int], None] | None = None):
        self._run = run
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self._on_batch = on_batch
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._queued_photos = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def depth(self) -> int:
        """Photos waiting (not yet in a running batch)."""
        return self._queued_photos

    def start(self) -> "Batcher":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="taxoclip-batcher", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def submit(self, pixels: torch.Tensor, key: Hashable) -> Future:
        n = pixels.shape[0]
        with self._lock:
            if self._queued_photos + n > self.max_queue:
                raise QueueFull(f"{self._queued_photos} photos are waiting (limit {self.max_queue})")
            self._queued_photos += n
        job = Job(pixels, key)
        self._queue.put(job)
        return job.future

    def _take(self) -> list[Job] | None:
        first = self._queue.get()
        if first is None:
            return None
        jobs, n = [first], first.pixels.shape[0]
        deadline = time.perf_counter() + self.max_wait_s
        while n < self.max_batch:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # stop after this batch
                break
            jobs.append(job)
            n += job.pixels.shape[0]
        with self._lock:
            self._queued_photos -= n
        return jobs

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            live = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                results = self._run(live)
            except Exception as e:  # the batch fails, the server goes on
                log.exception("batch of %d jobs failed", len(live))
                for j in live:
                    j.future.set_exception(e)
                continue
            for j, r in zip(live, results):
                j.future.set_result(r)
            if self._on_batch:
                self._on_batch(sum(j.pixels.shape[0] for j in live), len(live))

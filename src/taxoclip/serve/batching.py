"""`Batcher`: requests from many clients run through the model together.

One photo per call would scan the whole vocabulary once per photo (300K rows: ~25 ms alone)
and run the image tower at batch size 1; gathered into batches they cost what the offline
CLI's batches cost. Requests wait in one bounded queue (a full queue is refused at once, so
a flood cannot grow memory), and one thread runs batches: torch uses the cores inside it.

That thread also does the server's other torch work (`Batcher.call`: loading the model,
embedding a label set), so that it owns the process's only OpenMP team. Each thread that runs
a parallel torch op gets a team of its own, and once a process has more OpenMP threads than
cores, libgomp stops spin-waiting between parallel regions: batches of 16 photos took 75 ms
instead of 42 (2-core Xeon; the image tower 27 ms instead of 16, the scan 36 instead of 24).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

import torch

__all__ = ["Batcher", "Job", "QueueFull"]

log = logging.getLogger(__name__)
# A batch closes `max_wait_s` after its first photo, or once no photo has come for this share of
# it: with 16 one-photo clients the photos of a round arrive within ~6 ms, and waiting out the
# full 25 ms cost 21 ms of every ~95-ms round (2-core Xeon: 165 -> 186 photos/s at 0.4, 179 at 0.2,
# where batches shrank to 13 photos).
QUIET_SHARE = 0.4


class QueueFull(RuntimeError):
    """The queue holds its maximum of photos: the caller should retry later."""


@dataclass
class Job:
    """Some photos of one request, and how to score them (jobs with equal keys are scored together)."""

    pixels: Sequence[torch.Tensor]  # n photos, [3, H, W] each (stacked in the batch thread)
    key: Hashable
    future: Future = field(default_factory=Future)
    queued: float = field(default_factory=time.perf_counter)


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: Future = field(default_factory=Future)

    def run(self) -> None:
        if self.future.set_running_or_notify_cancel():
            try:
                self.future.set_result(self.fn())
            except BaseException as e:  # the caller gets it; the batch thread goes on
                self.future.set_exception(e)


class Batcher:
    """Gather jobs into batches of up to `max_batch` photos, waiting at most `max_wait_s` for more
    and at most `quiet_s` (default: `QUIET_SHARE` of `max_wait_s`) after the last one that came.

    `run(jobs)` does the work for one batch and returns one result per job (or raises: every
    job of the batch then fails with that error). `on_batch(n_photos, n_jobs, seconds)` observes.
    """

    def __init__(self, run: Callable[[list[Job]], list[Any]], *, max_batch: int = 64, max_wait_s: float = 0.025,
                 max_queue: int = 512, on_batch: Callable[[int, int, float], None] | None = None,
                 quiet_s: float | None = None):
        self._run = run
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.quiet_s = max_wait_s * QUIET_SHARE if quiet_s is None else quiet_s
        self._on_batch = on_batch
        self._queue: queue.Queue[Job | _Call | None] = queue.Queue()
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
        while not self._queue.empty():  # what came after the stop: its callers must not wait forever
            item = self._queue.get_nowait()
            if item is not None and item.future.set_running_or_notify_cancel():
                item.future.set_exception(RuntimeError("the server is stopping"))

    def submit(self, pixels: Sequence[torch.Tensor], key: Hashable) -> Future:
        n = len(pixels)
        with self._lock:
            if self._queued_photos + n > self.max_queue:
                raise QueueFull(f"{self._queued_photos} photos are waiting (limit {self.max_queue})")
            self._queued_photos += n
        job = Job(pixels, key)
        self._queue.put(job)
        return job.future

    def call(self, fn: Callable[[], Any]) -> Any:
        """`fn()` run in the batch thread, between batches (at once when called from it, or before
        `start`): torch work outside batches then uses the batches' OpenMP team."""
        if self._thread is None or threading.current_thread() is self._thread:
            return fn()
        c = _Call(fn)
        self._queue.put(c)
        return c.future.result()

    def _take(self, first: Job) -> tuple[list[Job], list[_Call]]:
        """A batch from `first` on, and the calls that arrived while it gathered."""
        jobs, calls, n = [first], [], len(first.pixels)
        now = time.perf_counter()
        deadline, quiet = now + self.max_wait_s, now + self.quiet_s
        while n < self.max_batch:
            try:
                item = self._queue.get(timeout=max(0.0, min(deadline, quiet) - time.perf_counter()))
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # stop after this batch
                break
            if isinstance(item, _Call):
                calls.append(item)
                continue
            jobs.append(item)
            n += len(item.pixels)
            quiet = time.perf_counter() + self.quiet_s
        with self._lock:
            self._queued_photos -= n
        return jobs, calls

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, _Call):
                item.run()
                continue
            jobs, calls = self._take(item)
            self._run_batch(jobs)
            for c in calls:
                c.run()

    def _run_batch(self, jobs: list[Job]) -> None:
        live = [j for j in jobs if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        start = time.perf_counter()
        try:
            results = self._run(live)
        except Exception as e:  # the batch fails, the server goes on
            log.exception("batch of %d jobs failed", len(live))
            for j in live:
                j.future.set_exception(e)
            return
        for j, r in zip(live, results):
            j.future.set_result(r)
        if self._on_batch:
            self._on_batch(sum(len(j.pixels) for j in live), len(live), time.perf_counter() - start)

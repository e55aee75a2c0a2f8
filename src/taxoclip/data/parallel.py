"""An ordered, bounded parallel map over worker processes.

Why not `Pool.imap`: its feeder thread drains the input iterator as fast as it can, so a
stream of a million images would be read into memory. Here at most `window` batches are in
flight, results come back in input order (which keeps a build deterministic), and with
`workers=0` everything runs in the calling process (tests, debugging).
"""
from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

from ..orphans import die_with_parent

__all__ = ["ordered_map", "default_workers"]

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """One worker per core the process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _noop() -> None:
    return None


def _die_with_parent(parent: int, initializer: Callable | None, *initargs) -> None:
    """Worker start: exit when the parent dies (a killed build would otherwise leave its workers
    waiting forever on a queue no one writes to), then the caller's initializer."""
    die_with_parent(parent)
    if initializer is not None:
        initializer(*initargs)


class ordered_map:
    """Iterate over `fn(batch)` for each batch, in order; use as a context manager.

    Workers are forked when the map is created (before the caller starts threads, e.g. the
    HTTP fetcher), run `initializer(*initargs)` once, and are shut down on exit.
    """

    def __init__(self, fn: Callable[[T], R], *, workers: int, initializer: Callable | None = None,
                 initargs: tuple = (), window: int | None = None):
        self.fn = fn
        self.workers = max(0, int(workers))
        self.window = window or max(2, 4 * self.workers)
        self.pool: ProcessPoolExecutor | None = None
        if self.workers:
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            self.pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_die_with_parent,
                                            initargs=(os.getpid(), initializer, *initargs))
            for f in [self.pool.submit(_noop) for _ in range(self.workers)]:
                f.result()  # start every worker now
        elif initializer is not None:
            initializer(*initargs)

    def __call__(self, batches: Iterable[T]) -> Iterator[R]:
        if self.pool is None:
            for batch in batches:
                yield self.fn(batch)
            return
        pending: deque[Future] = deque()
        for batch in batches:
            pending.append(self.pool.submit(self.fn, batch))
            if len(pending) >= self.window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def __enter__(self) -> "ordered_map":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""Memory for decoding giant images: one byte budget shared by every decoding worker of a run.

Why: a 300-megapixel TIFF needs ~1.2 GB to decode, and four workers meeting four of them at
once can exhaust a laptop. Before decoding such an image a worker reserves its estimated
bytes from a `DecodeBudget`, waits while the others' reservations leave too little, and
releases them once the image is reduced. The counter lives in shared memory, guarded by a
`multiprocessing` condition made before the workers fork (threads may share it too), so all
of them see one budget.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
from typing import Iterator

__all__ = ["DecodeBudget", "OverBudget", "available_memory", "default_budget", "format_bytes", "parse_bytes"]

DEFAULT_SHARE = 0.5  # of the memory available when a run starts
_FLOOR = 512 * 2**20  # the default is never less: room for one giant image's frugal path
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


def parse_bytes(text: str | int | float) -> int:
    """'4GB', '500MB', '1.5g', '2GiB' or a plain number of bytes -> bytes (K, M, G are powers of 1024)."""
    if isinstance(text, (int, float)):
        value = int(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
        unit = m.group(2).lower() if m else None
        if unit not in _UNITS:
            raise ValueError(f"expected a size such as 4GB or 500MB, got {text!r}")
        value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"a memory size must be positive, got {text!r}")
    return value


def format_bytes(n: float) -> str:
    """Bytes as people read them: '1.3 GB', '350 MB' (powers of 1024, as `parse_bytes`)."""
    if n >= 2**30:
        return f"{n / 2**30:.1f} GB"
    return f"{max(1, round(n / 2**20))} MB"


def available_memory() -> int:
    """Bytes this process could still use: the kernel's MemAvailable, capped by a cgroup v2 limit
    (a container's own limit, which MemAvailable does not show)."""
    avail = 8 * 2**30  # where neither is known
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        with contextlib.suppress(ValueError, OSError, AttributeError):
            avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                avail = min(avail, int(limit) - int(f.read().strip()))
    except (OSError, ValueError):
        pass
    return max(avail, 0)


def default_budget() -> int:
    """Half of the memory available now, and never less than `_FLOOR`."""
    return max(int(available_memory() * DEFAULT_SHARE), _FLOOR)


class OverBudget(ValueError):
    """A request larger than the whole budget: it could never be granted."""


class DecodeBudget:
    """A byte counter shared by the processes forked (and threads started) after it is made.

    `reserve(n)` blocks until `n` bytes fit beside the other reservations, so the bytes reserved
    never exceed `limit`. A worker holds at most one reservation, and only while decoding, so
    every request up to `limit` is granted once the current holders finish: no deadlock.
    """

    def __init__(self, limit: int, context=None):
        ctx = context or multiprocessing.get_context("fork" if os.name == "posix" else None)
        self.limit = int(limit)
        self._used = ctx.RawValue("q", 0)
        self._cond = ctx.Condition()

    @property
    def in_use(self) -> int:
        return self._used.value

    @contextlib.contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        nbytes = int(nbytes)
        if nbytes > self.limit:
            raise OverBudget(f"needs ~{format_bytes(nbytes)}, more than the budget of {format_bytes(self.limit)}")
        with self._cond:
            while self._used.value + nbytes > self.limit:
                self._cond.wait(timeout=1.0)  # re-checks now and then: robust to a missed wake-up
            self._used.value += nbytes
        try:
            yield
        finally:
            with self._cond:
                self._used.value -= nbytes
                self._cond.notify_all()

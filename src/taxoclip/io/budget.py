"""Memory for decoding giant images: one byte budget shared by every decode worker of a loader.

A 300-megapixel PNG needs ~1.2 GB to decode (Pillow cannot decode PNG at reduced size), and
four decode workers meeting four of them at once could exhaust a laptop. Before decoding
such an image a worker reserves its estimated bytes from a `DecodeBudget`, waits while the
other workers' reservations leave too little, and releases them once the image is reduced
to model size. The counter lives in shared memory and is guarded by a `multiprocessing`
condition created before the workers fork, so all of them see one budget. Ordinary photos
(under `RESERVE_MIN_BYTES`) never touch it.
"""
from __future__ import annotations

import multiprocessing
import os
import re
from contextlib import contextmanager
from typing import Iterator

__all__ = ["RESERVE_MIN_BYTES", "DecodeBudget", "OverBudget", "available_memory", "default_budget",
           "format_bytes", "parse_bytes"]

# Below this an image decodes without a reservation: ~50 MP of RGB as Pillow holds it (4 bytes
# a pixel). Anything a camera makes stays under it in the draft-decoding path.
RESERVE_MIN_BYTES = 200 * 2**20
DEFAULT_SHARE = 0.5  # of the memory available when the loader starts

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


def parse_bytes(text: str | int | float) -> int:
    """'4GB', '500MB', '1.5g', '2GiB' or a plain number of bytes -> bytes (K, M, G are powers of 1024)."""
    if isinstance(text, (int, float)):
        value = int(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
        unit = m and m.group(2).lower()
        if not m or unit not in _UNITS:
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
    """Bytes this process could still use: MemAvailable (or psutil), capped by a cgroup limit."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            import psutil

            avail = psutil.virtual_memory().available
        except ImportError:
            try:
                avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
            except (ValueError, OSError, AttributeError):
                avail = 8 * 2**30
    try:  # a container's own limit (cgroup v2), which MemAvailable does not show
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                avail = min(avail, int(limit) - int(f.read().strip()))
    except (OSError, ValueError):
        pass
    return max(avail, 0)


def default_budget() -> int:
    """Half of the memory available now (at least enough for one image that needs a reservation)."""
    return max(int(available_memory() * DEFAULT_SHARE), 2 * RESERVE_MIN_BYTES)


class OverBudget(Exception):
    """An image whose estimate exceeds the whole budget: it can never be decoded under it."""


class DecodeBudget:
    """A byte counter shared by processes forked after it is made.

    `reserve(n)` blocks until `n` bytes fit beside the other reservations, so memory in use
    by reservations never exceeds `limit`. A worker holds at most one reservation at a time
    and holds it only while decoding, so any request up to `limit` is eventually granted:
    there is no deadlock. Requests above `limit` raise `OverBudget` at once.
    """

    def __init__(self, limit: int, context=None):
        ctx = context or multiprocessing.get_context("fork" if os.name == "posix" else None)
        self.limit = int(limit)
        self._used = ctx.RawValue("q", 0)
        self._cond = ctx.Condition()

    @property
    def in_use(self) -> int:
        return self._used.value

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        nbytes = int(nbytes)
        if nbytes > self.limit:
            raise OverBudget(f"needs ~{format_bytes(nbytes)} to decode, more than the decode memory budget of "
                             f"{format_bytes(self.limit)}; raise --max-decode-memory")
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

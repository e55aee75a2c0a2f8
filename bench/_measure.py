"""Run a command as users run it and measure it: wall time and the peak summed RSS of its
process tree (sampled), shared by the side-by-side benchmarks in this folder."""
from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path


def measure(cmd: list[str], env: dict | None = None, cwd: Path | None = None, interval: float = 0.02) -> dict:
    """{"wall", "peak_rss_mb" (process tree, sampled every `interval` s), "rc", "stdout", "stderr"}."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
                            start_new_session=True)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not stop.is_set():
            try:
                peak = max(peak, sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]))
            except psutil.Error:
                pass
            stop.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    return {"wall": wall, "peak_rss_mb": peak / 2**20, "rc": proc.returncode, "stdout": out.decode(),
            "stderr": err.decode()}

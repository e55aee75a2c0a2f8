"""Run a command as users run it and measure it: wall time and the peak summed RSS of its
process tree (sampled), shared by the side-by-side benchmarks in this folder."""
from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path


def measure(cmd: list[str], env: dict | None = None, cwd: Path | None = None, interval: float = 0.02,
            kill_above_mb: float | None = None) -> dict:
    """{"wall", "cpu" (user + system seconds of the tree), "peak_rss_mb" (process tree, sampled every
    `interval` s), "rc", "killed", "stdout", "stderr"}. `kill_above_mb`: SIGKILL the whole tree once
    its RSS passes that (a run that would otherwise take the machine down)."""
    import os
    import resource
    import signal

    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
                            start_new_session=True)
    peak, killed = 0, False
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak, killed
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not stop.is_set():
            try:
                peak = max(peak, sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]))
            except psutil.Error:
                pass
            if kill_above_mb and peak > kill_above_mb * 2**20 and not killed:
                killed = True
                os.killpg(proc.pid, signal.SIGKILL)
            stop.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"wall": wall, "cpu": cpu, "peak_rss_mb": peak / 2**20, "rc": proc.returncode, "killed": killed,
            "stdout": out.decode(), "stderr": err.decode()}

"""Run a command as users run it and measure it: wall time and the peak memory of its process tree
(sampled), shared by the side-by-side benchmarks in this folder."""
from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path


def measure(cmd: list[str], env: dict | None = None, cwd: Path | None = None, interval: float = 0.02,
            kill_above_mb: float | None = None, pss: bool = False) -> dict:
    """{"wall", "cpu" (user + system seconds of the tree), "peak_rss_mb" (RSS summed over the process
    tree, sampled every `interval` s), "rc", "killed", "stdout", "stderr"}. `kill_above_mb`: SIGKILL
    the whole tree once its RSS passes that (a run that would otherwise take the machine down).

    `pss=True` adds "peak_pss_mb" and "pss_at_peak" ({pid: MB}): proportional set size, which counts
    a page shared by several processes (torch's libraries in every worker) once in the sum, so it is
    the tree's real memory; summed RSS counts shared pages per process and varies with how many of
    them a machine happens to touch. Reading it costs more, so only the memory tests ask for it."""
    import os
    import resource
    import signal

    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
                            start_new_session=True)
    peak, peak_pss, at_peak, killed = 0, 0, {}, False
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak, peak_pss, at_peak, killed
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not stop.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree))
                if pss:
                    each = {p.pid: p.memory_full_info().pss for p in tree}
                    if sum(each.values()) > peak_pss:
                        peak_pss, at_peak = sum(each.values()), {k: round(v / 2**20) for k, v in each.items()}
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
    r = {"wall": wall, "cpu": cpu, "peak_rss_mb": peak / 2**20, "rc": proc.returncode, "killed": killed,
         "stdout": out.decode(), "stderr": err.decode()}
    if pss:
        r.update(peak_pss_mb=peak_pss / 2**20, pss_at_peak=at_peak)
    return r

"""Whether this machine's cores slow each other down: a model batch alone and beside a busy core.

    python bench/bench_contention.py [--threads 2] [--batch 16]

Why: the server's batch of one-photo requests ran 2-4x slower than the same call in a script
(docs/serve.md). This times, in medians of 10 calls, the bundled model's image tower and its
scan of the whole vocabulary on one batch of 500x375 bench photos: alone, then beside a second
process that only spins a pure-Python loop (no vector work, no memory traffic to speak of).
For comparison it counts that loop's iterations per second alone and beside a second copy: on
cores that are really independent both ratios stay near 1.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_predict import make_photos  # bench/ is on sys.path when run as a script

SPIN = "import sys, time\nprint('ready', flush=True)\nwhile True: pass\n"
COUNT = ("import time\nn, end = 0, time.perf_counter() + 2.0\n"
         "while time.perf_counter() < end: n += 1\nprint(n / 2.0)\n")


def spinner() -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", SPIN], stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()  # it is spinning once it has said so
    return proc


def loop_rate() -> float:
    return float(subprocess.run([sys.executable, "-c", COUNT], capture_output=True, text=True, check=True).stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the model (default 2)")
    ap.add_argument("--batch", type=int, default=16, help="photos per batch (default 16, the server's)")
    args = ap.parse_args()

    import torch
    from PIL import Image

    from taxoclip import TreeOfLifeClassifier

    torch.set_num_threads(args.threads)
    clf = TreeOfLifeClassifier(workers=0)
    photos = make_photos(Path(tempfile.mkdtemp(prefix="bench-contention-")), args.batch)
    pixels = torch.stack([clf.model.preprocess(Image.open(p).convert("RGB")) for p in photos])
    score = clf.scorer("species", 5)

    def batch_ms() -> tuple[float, float]:
        tower, scan = [], []
        for _ in range(10):
            t0 = time.perf_counter()
            feats = clf.model.encode_image(pixels)
            t1 = time.perf_counter()
            score(feats)
            tower.append(t1 - t0)
            scan.append(time.perf_counter() - t1)
        return 1e3 * statistics.median(tower), 1e3 * statistics.median(scan)

    def beside_spinner(measure):
        other = spinner()
        try:
            return measure()
        finally:
            other.kill()

    batch_ms()  # warm-up
    alone, beside = batch_ms(), beside_spinner(batch_ms)
    loop_alone, loop_beside = loop_rate(), beside_spinner(loop_rate)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"{cpu}, batch {args.batch}, {args.threads} torch threads")
    for name, a, b in (("image tower", alone[0], beside[0]), ("vocabulary scan", alone[1], beside[1])):
        print(f"  {name:16s} alone {a:6.1f} ms   beside a spinning process {b:6.1f} ms   x{b / a:.2f}")
    print(f"  pure-Python loop alone {loop_alone / 1e6:.2f} M/s   beside another {loop_beside / 1e6:.2f} M/s   "
          f"x{loop_alone / loop_beside:.2f}")


if __name__ == "__main__":
    main()

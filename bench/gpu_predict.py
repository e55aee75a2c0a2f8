"""taxoclip vs pybioclip on one GPU: photos/s (steady state, batch size tuned for each) and GPU memory.

For a lent GPU machine (never run by the tests). Uses the offline cache of make_fake_hub.py:

    python ../shared/tools/make_fake_hub.py /tmp/fakehub
    python bench/gpu_predict.py --hub /tmp/fakehub [--photos DIR]

Each tool classifies the same photos at species rank over the full 867,455-taxon vocabulary,
in-process through its Python API, after one warm-up batch; the best batch size from a small
sweep is reported with its photos/s and peak GPU memory (torch.cuda.max_memory_allocated).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def photos_for(args) -> list[str]:
    if args.photos:
        return sorted(str(p) for p in Path(args.photos).glob("*.jpg"))
    import numpy as np
    from PIL import Image

    out = Path("/tmp/gpu-bench-photos")
    out.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(512):
        p = out / f"p{i:04d}.jpg"
        if not p.exists():
            Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)).save(p, quality=90)
        paths.append(str(p))
    return paths


def measure(predict, photos, batch):
    import torch

    predict(photos[:batch], batch)  # warm-up (compilation, cuDNN autotuning)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    n = min(len(photos), max(4 * batch, 256))
    t = time.perf_counter()
    predict(photos[:n], batch)
    torch.cuda.synchronize()
    return n / (time.perf_counter() - t), torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hub", required=True)
    ap.add_argument("--photos")
    ap.add_argument("--batches", default="32,64,128,256")
    args = ap.parse_args()
    os.environ.update(HF_HUB_CACHE=args.hub, HF_HUB_OFFLINE="1")
    photos = photos_for(args)
    batches = [int(b) for b in args.batches.split(",")]

    from bioclip import Rank as BRank
    from bioclip import TreeOfLifeClassifier as PyBioclip

    from taxoclip import Rank, TreeOfLifeClassifier

    ours = TreeOfLifeClassifier("bioclip-2", device="cuda")
    theirs = PyBioclip(device="cuda")
    results = {}
    for name, fn in {
        "taxoclip": lambda ph, b: ours.predict(ph, rank=Rank.SPECIES, k=5, batch_size=b),
        "pybioclip": lambda ph, b: theirs.predict(ph, rank=BRank.SPECIES, k=5, batch_size=b),
    }.items():
        best = None
        for b in batches:
            try:
                rate, mem = measure(fn, photos, b)
            except RuntimeError as e:  # out of memory
                print(f"{name} batch {b}: {e}")
                break
            print(f"{name} batch {b}: {rate:.1f} photos/s, {mem:.1f} GiB", flush=True)
            if best is None or rate > best[1]:
                best = (b, rate, mem)
        results[name] = best
    (bt, rt, mt), (bp, rp, mp) = results["taxoclip"], results["pybioclip"]
    print(f"taxoclip {rt:.1f} photos/s (batch {bt}, {mt:.1f} GiB) | pybioclip {rp:.1f} photos/s (batch {bp}, "
          f"{mp:.1f} GiB) | ratio x{rt / rp:.2f}")


if __name__ == "__main__":
    main()

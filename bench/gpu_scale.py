"""The Ray engine on every GPU of a machine against the local engine on one GPU (never run by tests).

For a lent GPU machine. Uses the offline bioclip-2-shaped cache of make_fake_hub.py (ViT-L/14,
867,455-taxon vocabulary):

    python ../shared/tools/make_fake_hub.py /tmp/fakehub
    python bench/gpu_scale.py --hub /tmp/fakehub [--n 20000] [--batch-size 256]

Both runs are `taxoclip predict PHOTOS --model bioclip-2 --output DIR/` as a user types it:
the local engine on GPU 0, then `--engine ray --gpus-per-worker 1 --num-workers <GPUs>` (a
private Ray instance on loopback). Prints photos/s in total and per GPU, and the ratio.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path


def make_photos(folder: Path, n: int) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    have = len(list(folder.glob("*.jpg")))
    rng = np.random.default_rng(0)
    for i in range(have, n):
        a = (rng.random((480, 640, 3)) * 255).astype("uint8")
        Image.fromarray(a).save(folder / f"{i:06d}.jpg", quality=85)
    return folder


def timed(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode not in (0, 1):
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hub", required=True, help="offline HF cache from make_fake_hub.py")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--work", default="/tmp/gpu-scale")
    args = ap.parse_args()
    import torch

    gpus = torch.cuda.device_count()
    if not gpus:
        sys.exit("no GPU here")
    work = Path(args.work)
    photos = make_photos(work / "photos", args.n)
    env = {**os.environ, "HF_HUB_CACHE": args.hub, "HF_HUB_OFFLINE": "1"}
    base = [sys.executable, "-m", "taxoclip", "predict", str(photos), "--model", "bioclip-2",
            "--batch-size", str(args.batch_size), "--part-size", "2000"]
    subprocess.run(["rm", "-rf", str(work / "local"), str(work / "ray")])
    local = timed(base + ["--device", "cuda:0", "-o", f"{work / 'local'}/"], env)
    ray = timed(base + ["--engine", "ray", "--gpus-per-worker", "1", "--num-workers", str(gpus),
                        "-o", f"{work / 'ray'}/"], env)
    name = torch.cuda.get_device_name(0)
    print(f"{args.n} photos, bioclip-2-shaped ViT-L/14, 867,455 taxa, {gpus} x {name}")
    print(f"local engine, 1 GPU : {args.n / local:8.1f} photos/s")
    print(f"ray engine, {gpus} GPU(s): {args.n / ray:8.1f} photos/s = {args.n / ray / gpus:8.1f} per GPU "
          f"({args.n / ray / gpus / (args.n / local):.2f} of the local engine's one GPU)")


if __name__ == "__main__":
    main()

"""The bundled model as users run it: `taxoclip predict PHOTOS` with no flags, against pybioclip.

    python bench/bench_mini.py                                   # taxoclip-mini only
    python ../shared/tools/make_fake_hub.py /tmp/fakehub
    python bench/bench_mini.py --hub /tmp/fakehub                # + pybioclip with bioclip-2's shape

Photos: 500x375 JPEGs made from bio-mini (bench_predict.make_photos). Prints
  * first run on a fresh cache (one photo: includes unpacking the vocabulary and preparing the
    image tower) and a later one;
  * steady state: (512 - 64) / (T(512) - T(64)) photos/s, and the 512-photo end-to-end time;
    with --torch-tower, also with the image tower on torch instead of ONNX Runtime, side by side;
  * peak resident memory (largest process, and the whole process tree);
  * where the time goes, measured in this process on 512 photos: decoding + preprocessing
    (one core), the image tower, and the scan of the whole vocabulary (batches of 64);
  * with --hub: pybioclip (`bioclip predict`, bioclip-2-shaped random weights, 867K taxa)
    on 16 and 64 photos, its steady photos/s, and the ratio.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_predict import make_photos, timed  # bench/ is on sys.path when run as a script


def breakdown(photos: list[Path]) -> dict[str, float]:
    """Milliseconds per photo for decoding, the image tower and the vocabulary scan."""
    import torch

    from taxoclip import TreeOfLifeClassifier
    from taxoclip.io.images import ImageLoader, find_images

    clf = TreeOfLifeClassifier()
    refs, _ = find_images([str(p) for p in photos])
    t = time.perf_counter()
    batches = list(ImageLoader(refs, clf.model.preprocess, batch_size=64, workers=0, draft=True))
    decode = time.perf_counter() - t
    t = time.perf_counter()
    feats = [clf.model.encode_image(b.pixels) for b in batches]
    tower = time.perf_counter() - t
    t = time.perf_counter()
    for f in feats:
        clf.bank.top_k(f, 5, clf.model.logit_scale)
    scan = time.perf_counter() - t
    n = len(photos)
    return {"decode_ms": 1e3 * decode / n, "tower_ms": 1e3 * tower / n, "scan_ms": 1e3 * scan / n,
            "vocabulary": len(clf.bank), "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hub", help="HF_HUB_CACHE made by make_fake_hub.py (runs pybioclip for the ratio)")
    ap.add_argument("--work", help="scratch folder (default: a temporary one)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per timing (the median is printed)")
    ap.add_argument("--torch-tower", action="store_true",
                    help="also the steady state with the image tower on torch (TAXOCLIP_ONNX=0), runs alternating")
    args = ap.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-mini-"))
    photos = make_photos(work / "photos", 512)
    cache = work / "taxoclip-cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TAXOCLIP_CACHE": str(cache)}
    if args.hub:
        env["HF_HUB_CACHE"] = args.hub

    def ours(ph, out):
        return ["taxoclip", "predict", *map(str, ph), "--output", str(out)]

    first = timed(ours(photos[:1], work / "first.csv"), env)
    # This machine's timings vary by +-20% from run to run: each figure is the median of --repeat runs.
    later, r64, r512 = ({k: statistics.median(r[k] for r in runs) for k in runs[0]} for runs in zip(*[
        (timed(ours(photos[:1], work / "later.csv"), env), timed(ours(photos[:64], work / "t64.csv"), env),
         timed(ours(photos, work / "t512.csv"), env)) for _ in range(args.repeat)]))
    steady = (512 - 64) / (r512["wall_s"] - r64["wall_s"])
    cpu = open("/proc/cpuinfo").read().split("model name")[1].split(":")[1].splitlines()[0].strip()
    print(f"machine: {os.cpu_count()} CPUs, {cpu}")
    print(f"taxoclip-mini  first run (fresh cache, 1 photo) {first['wall_s']:.1f} s, peak RSS {first['max_rss_gb']:.2f} GB "
          f"(process), {first['tree_rss_gb']:.2f} GB (tree) | later run {later['wall_s']:.1f} s "
          f"(medians of {args.repeat} runs from here on)")
    print(f"taxoclip-mini  steady {steady:.0f} photos/s | 512 photos end to end {r512['wall_s']:.1f} s | "
          f"64 photos {r64['wall_s']:.1f} s | peak RSS {max(r['max_rss_gb'] for r in (r64, r512)):.2f} GB (process), "
          f"{max(r['tree_rss_gb'] for r in (r64, r512)):.2f} GB (process tree)")
    if args.torch_tower:  # the ONNX Runtime tower (the default) against torch's run of the same graph
        env_torch = {**env, "TAXOCLIP_ONNX": "0"}
        runs = {"onnx": ([], []), "torch": ([], [])}
        for _ in range(args.repeat):
            for name, e in (("torch", env_torch), ("onnx", env)):
                runs[name][0].append(timed(ours(photos[:64], work / "t64.csv"), e))
                runs[name][1].append(timed(ours(photos, work / "t512.csv"), e))
        rate = {k: (512 - 64) / (statistics.median(r["wall_s"] for r in b) - statistics.median(r["wall_s"] for r in a))
                for k, (a, b) in runs.items()}
        rss = {k: max(r["max_rss_gb"] for r in a + b) for k, (a, b) in runs.items()}
        print(f"image tower    on torch: steady {rate['torch']:.0f} photos/s, peak RSS {rss['torch']:.2f} GB | on ONNX "
              f"Runtime: {rate['onnx']:.0f} photos/s, {rss['onnx']:.2f} GB | x{rate['onnx'] / rate['torch']:.2f} "
              f"(alternating runs, medians of {args.repeat})")
    os.environ["TAXOCLIP_CACHE"] = str(cache)
    b = breakdown(photos)
    print(f"where the time goes (ms per photo, {b['threads']} threads, {b['vocabulary']:,} taxa): decode + preprocess "
          f"{b['decode_ms']:.2f} (one core) | image tower {b['tower_ms']:.2f} | vocabulary scan {b['scan_ms']:.2f}")
    if args.hub:
        def theirs(ph, out):
            return ["bioclip", "predict", *map(str, ph), "--rank", "species", "--k", "5", "--output", str(out)]
        p16 = timed(theirs(photos[:16], work / "p16.csv"), env)
        p64 = timed(theirs(photos[:64], work / "p64.csv"), env)
        p_steady = 48 / (p64["wall_s"] - p16["wall_s"])
        print(f"pybioclip      steady {p_steady:.2f} photos/s (bioclip-2 shape, 867K taxa) | 64 photos end to end "
              f"{p64['wall_s']:.1f} s | peak RSS {p64['max_rss_gb']:.2f} GB")
        print(f"ratios         steady x{steady / p_steady:.0f} | 64 photos end to end x{p64['wall_s'] / r64['wall_s']:.1f}")


if __name__ == "__main__":
    sys.exit(main())

"""taxoclip predict vs pybioclip's `bioclip predict`, side by side on this machine.

Both CLIs run as users run them, against the same offline Hugging Face cache made by
`../shared/tools/make_fake_hub.py` (bioclip-2's real ViT-L/14 architecture with random
weights, and the full 768 x 867,455 vocabulary), on the same photos.

    python ../shared/tools/make_fake_hub.py /tmp/fakehub
    python bench/bench_predict.py --hub /tmp/fakehub --photos PHOTO_DIR

Prints, for each tool:
  * steady-state photos/s: (64 - 16) / (T(64 photos) - T(16 photos)), which cancels start-up
    and compilation whatever the tool does before its first photo;
  * end-to-end wall time for 32 photos;
  * peak resident memory (the largest single process, as `/usr/bin/time` reports, and the
    sum over the process tree, sampled every 50 ms);
and the ratios, plus the fp32 agreement check (same top-5, scores within 1e-4 relative).
Without --photos, 64 photos of 500x375 px are made from bio-mini (upscaled) or synthesised.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd

from _measure import measure  # bench/ is on sys.path when run as a script


def make_photos(out: Path, n: int = 64) -> list[Path]:
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    bio = Path(__file__).resolve().parents[2] / "shared/data/bio-mini"
    sources = []
    for t in sorted(bio.glob("*/test-000.tar")) + sorted(bio.glob("*/val-000.tar")):
        with tarfile.open(t) as tar:
            for m in tar:
                if m.name.endswith(".jpg") and len(sources) < n:
                    sources.append(tar.extractfile(m).read())
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        if i < len(sources):
            img = Image.open(io.BytesIO(sources[i])).convert("RGB").resize((500, 375), Image.Resampling.LANCZOS)
        else:
            img = Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8))
        p = out / f"photo_{i:03d}.jpg"
        img.save(p, quality=90)
        paths.append(p)
    return paths


def timed(cmd: list[str], env: dict) -> dict:
    """Run a command; wall time, peak RSS of the largest process (exact, from the kernel) and of
    the whole tree (sampled every 50 ms)."""
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)")
    r = measure([sys.executable, "-c", wrapper, *cmd], env=env, interval=0.05)
    if r["rc"] != 0:
        raise SystemExit(f"failed ({r['rc']}): {' '.join(cmd)}\n{r['stderr'][-2000:]}")
    max_rss_kb = int(r["stderr"].strip().splitlines()[-1])
    return {"wall_s": r["wall"], "max_rss_gb": max_rss_kb / 1e6, "tree_rss_gb": r["peak_rss_mb"] * 2**20 / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hub", required=True, help="HF_HUB_CACHE made by make_fake_hub.py")
    ap.add_argument("--photos", help="folder of photos (default: made from bio-mini)")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--skip-pybioclip", action="store_true")
    args = ap.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-predict-"))
    photos = sorted(Path(args.photos).glob("*.jpg")) if args.photos else make_photos(work / "photos")
    if len(photos) < 64:
        raise SystemExit(f"need 64 photos, found {len(photos)}")
    env = {**os.environ, "HF_HUB_CACHE": args.hub, "HF_HUB_OFFLINE": "1",
           "TAXOCLIP_CACHE": str(work / "taxoclip-cache")}
    tools = {
        "taxoclip": lambda ph, out, *extra: ["taxoclip", "predict", *map(str, ph), "--rank", "species", "--k", "5",
                                              "--output", str(out), *extra],
        "pybioclip": lambda ph, out, *extra: ["bioclip", "predict", *map(str, ph), "--rank", "species", "--k", "5",
                                               "--output", str(out), *extra],
    }
    # One untimed run each: vocabulary conversion (taxoclip) and OS file caches are warm for both.
    print("warming up …", flush=True)
    timed(tools["taxoclip"](photos[:2], work / "warm.csv"), env)
    results = {}
    for name, cmd in tools.items():
        if name == "pybioclip" and args.skip_pybioclip:
            continue
        r16 = timed(cmd(photos[:16], work / f"{name}-16.csv"), env)
        r64 = timed(cmd(photos[:64], work / f"{name}-64.csv"), env)
        r32 = timed(cmd(photos[:32], work / f"{name}-32.csv"), env)
        steady = 48 / (r64["wall_s"] - r16["wall_s"])
        results[name] = {"steady_photos_per_s": steady, "e2e_32_s": r32["wall_s"],
                         "max_rss_gb": max(r["max_rss_gb"] for r in (r16, r64, r32)),
                         "tree_rss_gb": max(r["tree_rss_gb"] for r in (r16, r64, r32)),
                         "t16_s": r16["wall_s"], "t64_s": r64["wall_s"]}
        print(name, {k: round(v, 2) for k, v in results[name].items()}, flush=True)

    print(f"\nmachine: {os.cpu_count()} CPUs; {open('/proc/cpuinfo').read().split('model name')[1].split(':')[1].splitlines()[0].strip()}")
    for name, r in results.items():
        print(f"{name:10s} steady {r['steady_photos_per_s']:.2f} photos/s | 32 photos end to end {r['e2e_32_s']:.1f} s | "
              f"peak RSS {r['max_rss_gb']:.2f} GB (process), {r['tree_rss_gb']:.2f} GB (process tree)")
    if "pybioclip" in results:
        t, p = results["taxoclip"], results["pybioclip"]
        print(f"ratios     steady x{t['steady_photos_per_s'] / p['steady_photos_per_s']:.2f} | "
              f"end to end x{p['e2e_32_s'] / t['e2e_32_s']:.2f} | memory x{t['max_rss_gb'] / p['max_rss_gb']:.2f}")
        # Agreement: fp32 taxoclip vs pybioclip on the 64 photos.
        timed(tools["taxoclip"](photos[:64], work / "taxoclip-fp32.csv", "--precision", "fp32"), env)
        ours = pd.read_csv(work / "taxoclip-fp32.csv", keep_default_na=False)
        theirs = pd.read_csv(work / "pybioclip-64.csv", keep_default_na=False)
        theirs["species"] = theirs.species.where(theirs.species_epithet != "", "")
        keys = [c for c in theirs.columns if c != "score"]
        same = (ours[keys].values == theirs[keys].values).all(axis=1).mean()
        rel = ((ours.score - theirs.score).abs() / theirs.score).max()
        default = pd.read_csv(work / "taxoclip-64.csv", keep_default_na=False)
        top1 = (default.groupby("file_name").head(1).species.values == theirs.groupby("file_name").head(1).species.values).mean()
        print(f"fp32 vs pybioclip: same top-5 rows {same:.1%}, max relative score difference {rel:.2e}; "
              f"default precision top-1 agreement with pybioclip {top1:.1%} (random weights: near-ties)")


if __name__ == "__main__":
    main()

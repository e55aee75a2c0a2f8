"""Soak: `taxoclip predict` over 20,000 generated photos (mixed sizes and formats, 1% corrupt).

    python bench/bench_soak.py                 # 20,000 photos, the bundled taxoclip-mini
    python bench/bench_soak.py --n 2000        # a quick run
    python bench/bench_soak.py --model DIR     # any model id (a tiny one for a faster soak)

What a long run must not do: grow (memory that leaks per photo shows as a last quartile above
the first), stop at a bad file, or lose count. The photos are real bio-mini photos when
../shared/data/bio-mini is here (synthetic textures otherwise), re-encoded at sizes from
320x240 to 2048x1536 as JPEG, PNG and WebP; 1 in 100 is corrupt in one of five ways
(truncated JPEG, truncated PNG, empty, random bytes, text named .png). `predict` runs as a
subprocess, as users run it; the resident memory of its whole process tree is sampled every
second (psutil). Prints the first- and last-quartile memory (median over the samples taken
while the first and the last quarter of the photos were written, so start-up is left out),
the peak, the throughput, and the error rows, and exits
1 unless the number of photos with an error row equals the number of corrupt files and every
photo has a row.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

SIZES = [(320, 240), (500, 375), (640, 480), (480, 640), (1024, 768), (1600, 1200), (2048, 1536)]
FORMATS = [("jpg", "JPEG", {"quality": 88}), ("jpg", "JPEG", {"quality": 75}), ("png", "PNG", {}),
           ("webp", "WEBP", {"quality": 80})]
CORRUPT = ("truncated-jpeg", "truncated-png", "empty", "random-bytes", "text-as-png")


def _sources(limit: int) -> list[Image.Image]:
    """Real photos from bio-mini when present, else textured synthetic images."""
    bio = Path(__file__).resolve().parents[2] / "shared/data/bio-mini"
    out: list[Image.Image] = []
    for t in sorted(bio.glob("*/*.tar")):
        with tarfile.open(t) as tar:
            for m in tar:
                if m.name.endswith(".jpg"):
                    out.append(Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB"))
                    if len(out) >= limit:
                        return out
    rng = np.random.default_rng(0)
    while len(out) < 64:
        yy, xx = np.mgrid[0:384, 0:512]
        base = np.stack([xx / 2, yy / 1.5, (np.sin(xx / rng.uniform(5, 40)) + 1) * 120], -1)
        out.append(Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)))
    return out


def make_photos(folder: Path, n: int, corrupt_every: int = 100, variants: int = 24) -> tuple[int, dict[str, str]]:
    """Write `n` photos into `folder`; returns (n, {file name: corruption}) for the corrupt ones.

    Each (size, format) pair is encoded from `variants` source photos once and the bytes are
    reused (encoding 20,000 PNGs and WebPs would take longer than the soak itself)."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = _sources(variants)
    rng = np.random.default_rng(1)
    encoded: dict[tuple[int, int, int], bytes] = {}
    corrupt: dict[str, str] = {}
    for i in range(n):
        s, f, v = i % len(SIZES), (i // len(SIZES)) % len(FORMATS), (i // 3) % len(sources)
        ext, fmt, kw = FORMATS[f]
        if i % corrupt_every == corrupt_every // 2:
            kind = CORRUPT[(i // corrupt_every) % len(CORRUPT)]
            name = f"{i:06d}.{'png' if kind in ('truncated-png', 'text-as-png') else 'jpg'}"
            buf = io.BytesIO()
            if kind in ("truncated-jpeg", "truncated-png"):
                sources[v].resize(SIZES[s]).save(buf, "JPEG" if kind == "truncated-jpeg" else "PNG")
                data = buf.getvalue()[: len(buf.getvalue()) * 2 // 5]
            elif kind == "empty":
                data = b""
            elif kind == "random-bytes":
                data = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
            else:
                data = b"this is a note, not a picture\n" * 20
            (folder / name).write_bytes(data)
            corrupt[name] = kind
            continue
        if (s, f, v) not in encoded:
            buf = io.BytesIO()
            sources[v].resize(SIZES[s], Image.Resampling.BILINEAR).save(buf, fmt, **kw)
            encoded[s, f, v] = buf.getvalue()
        (folder / f"{i:06d}.{ext}").write_bytes(encoded[s, f, v])
    return n, corrupt


def run_sampled(cmd: list[str], env: dict, out: Path, interval: float = 1.0) -> dict:
    """Run `cmd`; every `interval` s the RSS of its process tree and the rows it has written to `out`
    (CSV rows reach the file as they come): {"samples": [(seconds, rows, tree bytes, main process bytes)],
    "wall", "rc", "stderr"}."""
    import psutil

    t0 = time.perf_counter()
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    samples: list[tuple[float, int, int, int]] = []
    stop = threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        rows, offset = 0, 0
        while not stop.is_set():
            try:
                main_rss = root.memory_info().rss
                rss = main_rss + sum(p.memory_info().rss for p in root.children(recursive=True))
            except psutil.Error:
                rss = None
            if out.exists():
                with open(out, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                rows, offset = rows + chunk.count(b"\n"), offset + len(chunk)
            if rss is not None:
                samples.append((time.perf_counter() - t0, rows, rss, main_rss))
            stop.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    proc.wait()
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    err.seek(0)
    return {"samples": samples, "wall": wall, "rc": proc.returncode, "stderr": err.read().decode(errors="replace")}


def quartiles(samples: list[tuple[float, int, int, int]], n: int, column: int = 2) -> tuple[float, float]:
    """Median RSS (GB; `column` 2: the tree, 3: the main process) while the first quarter of the
    photos was being written, and while the last quarter was: start-up (the model loading) is left out."""
    first = [s[column] for s in samples if 0 < s[1] <= n / 4] or [0]
    last = [s[column] for s in samples if s[1] >= 3 * n / 4] or [0]
    return statistics.median(first) / 2**30, statistics.median(last) / 2**30


def error_rows(path: Path) -> tuple[int, dict[str, str]]:
    """(photos with a row, {file: error} for those whose row is an error)."""
    seen: set[str] = set()
    errors: dict[str, str] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            seen.add(row["file_name"])
            if row.get("error"):
                errors[row["file_name"]] = row["error"]
    return len(seen), errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="photos (default 20,000)")
    ap.add_argument("--model", default="taxoclip-mini")
    ap.add_argument("--workers", type=int, default=None, help="passed to predict (default: its own)")
    ap.add_argument("--work", help="scratch folder (default: a temporary one, removed after)")
    ap.add_argument("--samples", help="write the memory samples here (CSV: seconds, rows, tree_rss, main_rss)")
    args = ap.parse_args()

    import shutil

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-soak-"))
    try:
        folder = work / f"photos-{args.n}"
        t = time.perf_counter()
        n, corrupt = make_photos(folder, args.n)
        print(f"inputs: {n} photos ({len(corrupt)} corrupt: "
              + ", ".join(f"{k} {sum(v == k for v in corrupt.values())}" for k in CORRUPT)
              + f"), {sum(p.stat().st_size for p in folder.iterdir()) / 2**20:.0f} MB, made in "
              f"{time.perf_counter() - t:.0f} s")
        out = work / "out.csv"
        cmd = [sys.executable, "-m", "taxoclip", "predict", str(folder), "--model", args.model, "--k", "1",
               "-o", str(out)] + ([] if args.workers is None else ["--workers", str(args.workers)])
        env = {**os.environ, "HF_HUB_OFFLINE": "1",
               "TAXOCLIP_CACHE": os.environ.get("TAXOCLIP_CACHE", str(work / "cache"))}
        r = run_sampled(cmd, env, out)
        first, last = quartiles(r["samples"], n)
        main_first, main_last = quartiles(r["samples"], n, column=3)
        peak = max((s[2] for s in r["samples"]), default=0) / 2**30
        start = next((s[0] for s in r["samples"] if s[1] > 0), float("nan"))
        if args.samples:
            with open(args.samples, "w") as f:
                f.write("seconds,rows,tree_rss,main_rss\n" + "".join(",".join(map(str, s)) + "\n" for s in r["samples"]))
        rows, errors = error_rows(out) if out.exists() else (0, {})
        wrong = sorted(set(errors) ^ {str(folder / k) for k in corrupt})
        print(f"predict: exit {r['rc']} | {r['wall']:.0f} s ({start:.0f} s to the first row), "
              f"{n / (r['wall'] - start):.1f} photos/s after it | tree RSS first quartile "
              f"{first:.2f} GB, last quartile {last:.2f} GB ({last - first:+.2f}; main process {main_first:.2f} -> "
              f"{main_last:.2f}), peak {peak:.2f} GB "
              f"({len(r['samples'])} samples) | rows for {rows}/{n} photos | error rows {len(errors)}, "
              f"corrupt files {len(corrupt)}")
        for reason in sorted(set(errors.values())):
            print(f"  {sum(v == reason for v in errors.values()):4d} x {reason}")
        ok = r["rc"] in (0, 1) and rows == n and not wrong
        if not ok:
            print(f"FAILED: {len(wrong)} photos whose error row does not match their corruption: {wrong[:5]}"
                  f"\n{r['stderr'][-2000:]}")
        return 0 if ok else 1
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

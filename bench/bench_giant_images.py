"""Giant images: `taxoclip predict` over a folder of 300-megapixel PNGs and ordinary photos.

    python bench/bench_giant_images.py                          # 4 x 20000x15000 PNG + 32 photos, --workers 4
    python bench/bench_giant_images.py --depth 16               # 16-bit PNGs: decoded whole, under the budget
    python bench/bench_giant_images.py --depth 16 --max-decode-memory 1GB   # ... which refuses them: error rows
    git archive HEAD src | tar -x -C /tmp/head                  # the code before, side by side:
    python bench/bench_giant_images.py --peer-src /tmp/head/src --kill-above 12
    python bench/bench_giant_images.py --peer-src /tmp/head/src --throughput 256   # ordinary photos only

The PNGs are mostly flat with a noisy patch (1.5 MB each on disk, 1.2 GB each if decoded whole)
and are written row by row, without ever holding the image; files sort so that every batch
starts with a giant, and each worker meets one at the same time. Prints, per run: the peak resident
memory of the whole process tree (sampled every 0.2 s with psutil), wall time, and each
photo's status (a prediction, or its error). A run whose tree grows past --kill-above GB is
stopped there, so a peer without the memory budget cannot take the machine down.
"""
from __future__ import annotations

import argparse
import csv
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np


def _chunk(f, kind: bytes, data: bytes) -> None:
    f.write(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def write_flat_png(path: Path, width: int, height: int, seed: int = 0, patch: int = 256, depth: int = 8) -> Path:
    """An RGB PNG (8 or 16 bits a sample): a vertical colour gradient, flat along rows, with a
    `patch`-px square of noise in the middle. Each row is deflated on its own (full flush), so
    identical rows are compressed once and repeated: a 300 MP image is written in about a second
    with a few MB of memory."""
    rng = np.random.default_rng(seed)
    dtype, scale = (np.uint8, 1) if depth == 8 else (np.dtype(">u2"), 257)
    noise = rng.integers(0, 256 * scale, (min(patch, height), min(patch, width), 3)).astype(dtype)
    py, px = (height - noise.shape[0]) // 2, (width - noise.shape[1]) // 2
    cache: dict[tuple, tuple[bytes, bytes]] = {}
    adler = 1

    def deflated(raw: bytes) -> bytes:
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        return c.compress(raw) + c.flush(zlib.Z_FULL_FLUSH)  # byte-aligned, no back-references

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        _chunk(f, b"IHDR", struct.pack(">IIBBBBB", width, height, depth, 2, 0, 0, 0))
        buf = bytearray(b"\x78\x9c")  # zlib header
        for y in range(height):
            colour = (40 + y * 120 // height, 110, 60 + y * 60 // height)
            in_patch = py <= y < py + noise.shape[0]
            if in_patch or colour not in cache:
                row = np.empty((width, 3), dtype)
                row[:] = [c * scale for c in colour]
                if in_patch:
                    row[px:px + noise.shape[1]] = noise[y - py]
                raw = b"\x00" + row.tobytes()  # filter type 0
                entry = (raw, deflated(raw))
                if not in_patch:
                    cache[colour] = entry
            else:
                entry = cache[colour]
            adler = zlib.adler32(entry[0], adler)
            buf += entry[1]
            if len(buf) >= 1 << 20:
                _chunk(f, b"IDAT", bytes(buf))
                buf.clear()
        buf += zlib.compressobj(6, zlib.DEFLATED, -15).flush(zlib.Z_FINISH) + struct.pack(">I", adler)
        _chunk(f, b"IDAT", bytes(buf))
        _chunk(f, b"IEND", b"")
    return path


def run_tree(cmd: list[str], env: dict, interval: float = 0.2, kill_above_gb: float | None = None) -> dict:
    """`_measure.measure` with the peaks in GB: "peak_gb" (the process tree's summed RSS) and
    "peak_pss_gb" (its proportional set size: shared pages once, the memory the machine gives)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _measure import measure

    r = measure(cmd, env=env, interval=interval, kill_above_mb=kill_above_gb * 1024 if kill_above_gb else None,
                pss=True)
    return {**r, "peak_gb": r["peak_rss_mb"] / 1024, "peak_pss_gb": r["peak_pss_mb"] / 1024}


def statuses(csv_path: Path) -> dict[str, str]:
    """file_name -> 'ok: <top species>' or 'error: <reason>' (first row of each photo)."""
    out: dict[str, str] = {}
    if not csv_path.exists():
        return out
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            name = row["file_name"]
            if name not in out:
                err = row.get("error") or ""
                out[name] = f"error: {err}" if err else f"ok: {row.get('species') or row.get('common_name') or '?'}"
    return out


def make_inputs(work: Path, giants: int, size: tuple[int, int], normal: int, depth: int = 8) -> tuple[Path, int]:
    """The folder, and the batch size that puts one giant in each batch (files sort giant first in
    each batch), so that each decode worker meets one giant, at the same time as the others."""
    folder = work / f"input-{giants}x{size[0]}x{size[1]}x{depth}-{normal}"
    per = max(1, (giants + normal) // max(1, giants))
    if not folder.exists():
        staging = work / "staging"
        folder.mkdir(parents=True)
        for i in range(giants):
            write_flat_png(folder / f"{i * per:04d}_giant.png", *size, seed=i, depth=depth)
        if normal:
            sys.path.insert(0, str(Path(__file__).parent))
            from bench_predict import make_photos

            free = [k for k in range(giants + normal) if k % per or k // per >= giants]
            for k, photo in zip(free, make_photos(staging, normal)):
                photo.rename(folder / f"{k:04d}_photo.jpg")
    return folder, per


_DECODE_RATE = """
import sys, time
from taxoclip.io.images import ImageLoader, find_images
from taxoclip.models import ImagePreprocess
refs, _ = find_images(sys.argv[1:])
for draft, pre in ((True, ImagePreprocess(size=96, resize_mode="squash")),
                   (False, ImagePreprocess(size=224, resize_mode="squash", interpolation="bilinear"))):
    t = time.process_time()  # CPU time: a busy machine slows wall time, not this
    n = sum(len(b.ok) for b in ImageLoader(refs, pre, batch_size=64, workers=0, draft=draft))
    print(1e3 * (time.process_time() - t) / n)
"""


def throughput(work: Path, n: int, peer_src: str | None, env: dict) -> None:
    import statistics

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_predict import make_photos

    photos = [str(p) for p in make_photos(work / f"photos-{n}", n)]
    sides = [("this tree", env)] + ([("peer", {**env, "PYTHONPATH": peer_src})] if peer_src else [])
    ms: dict[str, list] = {label: [] for label, _ in sides}
    wall: dict[str, list] = {label: [] for label, _ in sides}
    for _ in range(5):
        for label, side_env in sides:
            out = subprocess.run([sys.executable, "-c", _DECODE_RATE, *photos], env=side_env, capture_output=True,
                                 text=True, check=True).stdout.split()
            ms[label].append([float(v) for v in out])
    for _ in range(3):
        for label, side_env in sides:
            r = run_tree([sys.executable, "-m", "taxoclip", "predict", *photos, "--output", str(work / "t.csv")],
                         side_env)
            wall[label].append((r["wall"], r["cpu"]))
    for label, _ in sides:
        d, f = (statistics.median(v[i] for v in ms[label]) for i in (0, 1))
        print(f"{label:9s} {n} photos 500x375, CPU ms/photo decode + preprocess: {d:.2f} (taxoclip-mini: draft, "
              f"96 px) | {f:.2f} (bioclip fp32: full decode, float resize to 224) | `taxoclip predict` "
              f"{statistics.median(w for w, _ in wall[label]):.1f} s wall, "
              f"{statistics.median(c for _, c in wall[label]):.1f} s CPU")
    if peer_src:
        ratio = [statistics.median(v[i] for v in ms["peer"]) / statistics.median(v[i] for v in ms["this tree"])
                 for i in (0, 1)]
        cpu = [statistics.median(c for _, c in wall[k]) for k in ("peer", "this tree")]
        print(f"ratios    peer / this tree: decode x{ratio[0]:.2f}, x{ratio[1]:.2f} | predict CPU x{cpu[0] / cpu[1]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", help="scratch folder (default: a temporary one)")
    ap.add_argument("--giants", type=int, default=4)
    ap.add_argument("--size", default="20000x15000", help="giant PNG size WxH")
    ap.add_argument("--depth", type=int, choices=[8, 16], default=8,
                    help="bits per sample of the PNGs: 8 decode band by band; 16 (colour) are decoded whole, "
                         "under the budget")
    ap.add_argument("--normal", type=int, default=32, help="ordinary 500x375 photos beside them")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--model", default="taxoclip-mini")
    ap.add_argument("--max-decode-memory", default="2GB", help="passed to predict; 'default' leaves it out")
    ap.add_argument("--peer-src", help="another checkout's src/ to run the same command with (e.g. the code before)")
    ap.add_argument("--kill-above", type=float, default=12.0, help="stop a run whose tree passes this many GB")
    ap.add_argument("--throughput", type=int, metavar="N", help="only time N ordinary photos (see above)")
    args = ap.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-giant-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "TAXOCLIP_CACHE": os.environ.get("TAXOCLIP_CACHE", str(work / "taxoclip-cache"))}
    if args.throughput:
        return throughput(work, args.throughput, args.peer_src, env)
    w, h = (int(v) for v in args.size.lower().split("x"))
    t = time.perf_counter()
    folder, per = make_inputs(work, args.giants, (w, h), args.normal, args.depth)
    print(f"inputs: {args.giants} {args.depth}-bit PNGs of {w}x{h} ({w * h / 1e6:.0f} MP, "
          f"{os.path.getsize(folder / '0000_giant.png') / 1e6:.1f} MB on disk each) + {args.normal} photos of 500x375, "
          f"made in {time.perf_counter() - t:.1f} s; batches of {per}, one giant in each")
    cmd = [sys.executable, "-m", "taxoclip", "predict", str(folder), "--model", args.model,
           "--workers", str(args.workers), "--batch-size", str(per)]
    runs = [("this tree", env, cmd + ([] if args.max_decode_memory == "default"
                                      else ["--max-decode-memory", args.max_decode_memory]))]
    if args.peer_src:
        runs.append(("peer", {**env, "PYTHONPATH": args.peer_src}, cmd))
    for label, run_env, run_cmd in runs:
        out = work / f"{label.replace(' ', '_')}.csv"
        r = run_tree(run_cmd + ["--output", str(out)], run_env, kill_above_gb=args.kill_above)
        st = statuses(out)
        n_ok = sum(v.startswith("ok") for v in st.values())
        normal_ok = sum(v.startswith("ok") for k, v in st.items() if k.endswith("_photo.jpg"))
        how = f"killed above {args.kill_above:.0f} GB" if r["killed"] else f"exit {r['rc']}"
        print(f"{label:9s} peak tree RSS {r['peak_gb']:.2f} GB, PSS {r['peak_pss_gb']:.2f} GB | wall {r['wall']:.1f} s | {how} | rows for "
              f"{len(st)}/{args.giants + args.normal} photos ({n_ok} predictions; normal photos {normal_ok}/{args.normal})"
              f" | {' '.join(run_cmd[3:])}")
        for name in sorted(k for k in st if k.endswith("_giant.png")):
            print(f"          {Path(name).name}: {st[name]}")
        if r["rc"] not in (0, 1) and not r["killed"]:  # 1: some photos became error rows
            print(r["stderr"][-2000:])


if __name__ == "__main__":
    sys.exit(main())

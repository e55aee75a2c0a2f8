"""The vocabulary scan by batch size: the packed int8 product (`TextBank.pack_int8`, what the
server uses) against the float32 product (what `taxoclip predict` uses), and how far apart
their answers are.

    python bench/bench_scan.py [--batches 1 9 16 32 64] [--photos 448]

Features: the bundled model's embeddings of bio-mini test photos when ../shared/data/bio-mini is
here (random unit vectors otherwise); vocabulary: the bundled tol-mini (300,212 taxa), top-5 at
species rank with the exact softmax. Prints ms per photo for both and their ratio for each batch
size, the packing time, and over every photo: whether the top-5 rows agree (exact ties aside)
and the largest and median relative difference of their probabilities.
"""
from __future__ import annotations

import argparse
import io
import statistics
import tarfile
import time
from pathlib import Path

import torch

BIO_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "bio-mini"


def features(clf, n: int) -> torch.Tensor:
    from PIL import Image

    images = []
    for shard in sorted(BIO_MINI.glob("*/test-*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                if m.name.endswith(".jpg") and len(images) < n:
                    images.append(Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB"))
        if len(images) >= n:
            break
    if not images:
        return torch.nn.functional.normalize(torch.randn(n, clf.model.embed_dim), dim=1)
    with torch.inference_mode():
        return torch.cat([clf.model.encode_image(torch.stack([clf.model.preprocess(im) for im in images[i:i + 64]]))
                          for i in range(0, len(images), 64)]).float()


def ms_per_photo(bank, feats: torch.Tensor, batch: int, scale: float, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        t, n = time.perf_counter(), 0
        for i in range(0, len(feats) - batch + 1, batch):
            bank.top_k(feats[i:i + batch], 5, scale)
            n += batch
        runs.append(1e3 * (time.perf_counter() - t) / n)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 9, 16, 32, 64])
    ap.add_argument("--photos", type=int, default=448)
    ap.add_argument("--repeat", type=int, default=3, help="timings per figure (the median is printed)")
    args = ap.parse_args()
    from taxoclip import TreeOfLifeClassifier
    from taxoclip.textbank import INT8_MAX_BATCH

    clf = TreeOfLifeClassifier()
    bank, scale = clf.bank, clf.scale
    feats = features(clf, args.photos)
    plain = TreeOfLifeClassifier().bank  # the same rows in a bank of its own, never packed
    t = time.perf_counter()
    if not bank.pack_int8():
        raise SystemExit("no FBGEMM int8 product on this CPU: nothing to compare")
    pack_s = time.perf_counter() - t
    cpu = open("/proc/cpuinfo").read().split("model name")[1].split(":")[1].splitlines()[0].strip()
    print(f"machine: {torch.get_num_threads()} torch threads, {cpu}; {len(bank):,} taxa; packing {pack_s:.2f} s; "
          f"{len(feats)} photos ({'bio-mini' if BIO_MINI.exists() else 'random'} features)")
    for b in args.batches:
        b = min(b, len(feats))
        f32 = ms_per_photo(plain, feats, b, scale, args.repeat)
        q = ms_per_photo(bank, feats, b, scale, args.repeat)
        used = "int8" if b <= INT8_MAX_BATCH else "float32 (above INT8_MAX_BATCH)"
        print(f"batch {b:3d}: float32 {f32:6.2f} ms/photo | packed bank ({used}) {q:6.2f} | x{f32 / q:.2f}")
    small = min(16, INT8_MAX_BATCH)
    got = [bank.top_k(feats[i:i + small], 5, scale) for i in range(0, len(feats), small)]
    want = [plain.top_k(feats[i:i + small], 5, scale) for i in range(0, len(feats), small)]
    pq, iq = torch.cat([p for p, _ in got]), torch.cat([i for _, i in got])
    pf, i_f = torch.cat([p for p, _ in want]), torch.cat([i for _, i in want])
    rel = ((pq - pf).abs() / pf.clamp_min(1e-12)).flatten()
    differ = (iq != i_f).any(1)
    # a row that differs at a rank whose score is the same in both is one of rows with equal scores
    ties = sum(bool(torch.allclose(pq[j], pf[j], rtol=1e-4)) for j in differ.nonzero().flatten())
    print(f"answers at batch {small}: top-5 rows differ for {int(differ.sum())} of {len(feats)} photos "
          f"({ties} of them only among rows of equal score); probabilities differ by at most "
          f"{rel.max():.1e} relative (median {rel.median():.1e})")

if __name__ == "__main__":
    main()

"""Nearest-photo search over bio-mini: how fast one query is answered, and how well the novelty
flag tells photos of collections held out of the index from photos of indexed ones.

    python bench/bench_index.py [--bio-mini DIR] [--queries 50] [--quantiles 0.01,0.05,0.10]

1. Speed: an index of every bio-mini training photo (`PhotoIndex`, exact faiss inner product,
   as `taxoclip index build` writes it), saved and loaded again; the model and index loaded once,
   then each of `--queries` val photos (JPEG files on disk) is answered alone as `taxoclip index
   search` does: decode, preprocess, image tower, search, novelty flag. Median and 95th
   percentile per query, with torch's default threads and with one (`OMP_NUM_THREADS=1`), beside
   the same search done with a numpy matrix product (the peer).
2. Novelty, sets held out: for each bio-mini set in turn, an index of the training photos of
   the 14 others; recall = share of the held-out set's val + test photos flagged novel; false
   alarms = share of the indexed sets' val + test photos flagged novel.
3. Novelty, species held out: an index of the training photos of 80 % of each set's taxa
   (drawn with seed 0); the same two rates on the val + test photos of the other 20 % and of the
   indexed taxa.

taxoclip-mini was trained on every bio-mini training photo: "held out" means held out of the
index, not of the model's training (bio-mini has no set the model has not seen).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from taxoclip.classify import ImageEmbedder  # noqa: E402
from taxoclip.evaluate import image_embeddings, load_datasets  # noqa: E402
from taxoclip.evaluate.prototypes import class_column  # noqa: E402
from taxoclip.evaluate.search import PhotoIndex  # noqa: E402
from taxoclip.models import load_model  # noqa: E402


def rates(train_v, known_q, novel_q, quantiles):
    """Per quantile: (threshold, false-alarm rate on known queries, recall on novel queries)."""
    index = PhotoIndex.build([str(i) for i in range(len(train_v))], train_v, "m")
    own = index._search(index.vectors, 2)[0][:, 1]
    best_known = index.search(known_q, 1)[0][:, 0]
    best_novel = index.search(novel_q, 1)[0][:, 0]
    out = {}
    for q in quantiles:
        t = float(np.quantile(own, q))
        out[q] = (t, float((best_known < t).mean()), float((best_novel < t).mean()))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bio-mini", type=Path, default=ROOT.parent / "shared" / "data" / "bio-mini")
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--quantiles", default="0.01,0.05,0.10")
    ap.add_argument("--part", choices=["all", "speed"], default="all", help="speed: only part 1")
    args = ap.parse_args()
    quantiles = [float(q) for q in args.quantiles.split(",")]

    model = load_model("taxoclip-mini", precision="fp32")
    train = load_datasets([args.bio_mini], ("train",))
    evals = load_datasets([args.bio_mini], ("val", "test"))
    tv = {ds.name: image_embeddings(model, ds) for ds in train}
    ev = {ds.name: image_embeddings(model, ds) for ds in evals}

    # 1. one query at a time over every training photo
    vectors = np.concatenate([tv[ds.name] for ds in train])
    names = [n for ds in train for n in ds.labels["file_name"]]
    labels = [c for ds in train for c in class_column(ds.labels)]
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        PhotoIndex.build(names, vectors, model.id, labels=labels).save(Path(tmp) / "index")
        built = time.perf_counter() - t
        t = time.perf_counter()
        index = PhotoIndex.load(Path(tmp) / "index")
        index.search(vectors[:1], 10)  # the faiss index is made on the first search
        loaded = time.perf_counter() - t
        photos = []
        for ds in evals:
            for ref in ds.refs[: max(1, args.queries // len(evals) + 1)]:
                with open(ref.path, "rb") as f:
                    f.seek(ref.offset)
                    path = Path(tmp) / f"q{len(photos)}.jpg"
                    path.write_bytes(f.read(ref.size))
                photos.append(path)
        photos = photos[: args.queries]
        embedder = ImageEmbedder(model)  # as `taxoclip index search` does (one photo: decoded in-process)
        print(f"index of {len(names):,} training photos ({vectors.shape[1]}-d): built and saved in {built:.1f} s, "
              f"loaded in {loaded:.2f} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        default_threads = torch.get_num_threads()
        for threads in sorted({default_threads, 1}, reverse=True):
            torch.set_num_threads(threads)  # what OMP_NUM_THREADS=1 taxoclip index search … does
            total, tower, search, peer = [], [], [], []
            for p in photos:
                t0 = time.perf_counter()
                (_, vec, _), = embedder.embed_iter([str(p)], normalize=True)
                t1 = time.perf_counter()
                index.search(vec[None], 10)
                t2 = time.perf_counter()
                np.argpartition(-(index.vectors @ vec), 10)[:10]
                peer.append(time.perf_counter() - t2)
                total.append(t2 - t0)
                tower.append(t1 - t0)
                search.append(t2 - t1)
            ms = lambda x: f"{1e3 * statistics.median(x):.1f}"  # noqa: E731
            print(f"one query, {threads} torch thread(s): median {ms(total)} ms (p95 "
                  f"{1e3 * float(np.quantile(total, 0.95)):.1f}) over {len(total)} queries = decode + image tower "
                  f"{ms(tower)} ms + search and novelty flag {ms(search)} ms (numpy matrix product instead: "
                  f"{ms(peer)} ms)")
        torch.set_num_threads(default_threads)
    if args.part == "speed":
        return 0

    # 2. sets held out of the index, one at a time
    print("\nnovelty flag, each set held out of the index in turn (val + test photos)\n")
    print("| held-out set | photos | " + " | ".join(f"recall @ q={q:g}" for q in quantiles) + " | "
          + " | ".join(f"false alarms @ q={q:g}" for q in quantiles) + " |")
    print("|---|---:|" + "---:|" * (2 * len(quantiles)))
    totals = {q: [] for q in quantiles}
    for held in [ds.name for ds in evals]:
        r = rates(np.concatenate([v for n, v in tv.items() if n != held]),
                  np.concatenate([v for n, v in ev.items() if n != held]), ev[held], quantiles)
        for q in quantiles:
            totals[q].append(r[q])
        print(f"| {held} | {len(ev[held])} | " + " | ".join(f"{100 * r[q][2]:.1f}" for q in quantiles) + " | "
              + " | ".join(f"{100 * r[q][1]:.1f}" for q in quantiles) + " |")
    print("| **mean over sets** | | " + " | ".join(f"**{100 * np.mean([x[2] for x in totals[q]]):.1f}**"
                                                for q in quantiles) + " | "
          + " | ".join(f"**{100 * np.mean([x[1] for x in totals[q]]):.1f}**" for q in quantiles) + " |")

    # 3. species held out within their sets
    rng = np.random.default_rng(0)
    train_keep, known_q, novel_q = [], [], []
    for tr in train:
        ed = next(d for d in evals if d.name == tr.name)
        taxa = sorted(set(tr.labels["target"]))
        out = set(rng.choice(taxa, max(1, round(0.2 * len(taxa))), replace=False)) if len(taxa) > 1 else set()
        train_keep.append(tv[tr.name][~tr.labels["target"].isin(out).to_numpy()])
        gone = ed.labels["target"].isin(out).to_numpy()
        novel_q.append(ev[ed.name][gone])
        known_q.append(ev[ed.name][~gone])
    r = rates(np.concatenate(train_keep), np.concatenate(known_q), np.concatenate(novel_q), quantiles)
    print(f"\nnovelty flag, 20 % of each set's taxa held out of the index ({sum(map(len, novel_q))} photos of "
          f"held-out taxa, {sum(map(len, known_q))} of indexed taxa)\n")
    print("| quantile | threshold | recall (held-out taxa) | false alarms (indexed taxa) |\n|---:|---:|---:|---:|")
    for q in quantiles:
        print(f"| {q:g} | {r[q][0]:.3f} | {100 * r[q][2]:.1f} | {100 * r[q][1]:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

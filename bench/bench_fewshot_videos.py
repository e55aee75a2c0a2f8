"""egu-fish few-shot with queries from other videos than the support: is the random network's lead
there frames of one video in both support and queries?

    python bench/bench_fewshot_videos.py [--bio-mini ../shared/data/bio-mini]

Prints, for taxoclip-mini and its random-init floor, 1-shot SimpleShot (CL2N) as `taxoclip eval
few-shot` runs it and the same with every query from a video no support photo comes from
(the video is the frame's source path without `_fishN_frameM`); 5 folds seeded by the fold.
"""
from __future__ import annotations

import argparse
import glob
import json
import re
import tarfile
from pathlib import Path

import numpy as np

from taxoclip.evaluate.datasets import load_datasets
from taxoclip.evaluate.embeddings import image_embeddings, random_init_model
from taxoclip.evaluate.fewshot import _cl2n, simpleshot_accuracy
from taxoclip.models import load_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bio-mini", default=str(Path(__file__).resolve().parents[2] / "shared/data/bio-mini"))
    args = ap.parse_args()
    root = Path(args.bio_mini) / "egu-fish"
    [ds] = load_datasets([str(root)])
    source = {}
    for shard in glob.glob(str(root / "*.tar")):
        with tarfile.open(shard) as tf:
            for m in tf:
                if m.name.endswith(".json"):
                    j = json.load(tf.extractfile(m))
                    source[j["key"]] = j["source_path"]
    keys = [f.rsplit("/", 1)[-1].split(".")[0] for f in ds.column("file_name")]
    video = np.array([re.sub(r"_fish\d+_frame\d+\.\w+$", "", source[k]) for k in keys])
    y = np.asarray(ds.column("target"))
    labels = np.array(sorted(set(y)))
    print(f"egu-fish: {len(y)} photos, {len(set(video))} videos, {len(labels)} classes")
    for name, model in (("taxoclip-mini", load_model("taxoclip-mini")), ("random init", random_init_model("taxoclip-mini"))):
        f = np.asarray(image_embeddings(model, ds, progress=False), dtype=np.float64)
        standard = np.mean([simpleshot_accuracy(f, y, 1, fold) for fold in range(5)])
        other_videos = []
        for fold in range(5):
            rng = np.random.default_rng(fold)
            sup = [rng.choice(np.flatnonzero(y == c)) for c in labels]
            mean, seen = f[sup].mean(0), {video[j] for j in sup}
            qry = [i for i in range(len(y)) if video[i] not in seen]
            pred = labels[np.argmax(_cl2n(f[qry], mean) @ _cl2n(f[sup], mean).T, 1)]
            other_videos.append((pred == y[qry]).mean())
        print(f"{name:14s} 1-shot {100 * standard:5.1f} %   queries from other videos "
              f"{100 * np.mean(other_videos):5.1f} % (fold sd {100 * np.std(other_videos):.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

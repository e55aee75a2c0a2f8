"""Zero-shot top-1 of a model on every bio-mini set, at species and higher ranks (the model card's table).

    python bench/eval_zero_shot.py --bio-mini ../shared/data/bio-mini                 # bundled model
    python bench/eval_zero_shot.py --bio-mini ../shared/data/bio-mini --model runs/taxoclip-mini/export

Two label sets: every bio-mini taxon (the 600 lineages of taxa.csv, whatever rank a label stops
at), and the model's whole vocabulary (tol-mini for the bundled model: 300K species plus those
taxa). A photo counts as right at a rank when the predicted taxon's lineage down to that rank
equals its label's; species top-1 asks for the whole label (a photo labelled only to genus must
get that genus row). Rank columns count only photos labelled at least that deep. Class texts
are the model card's (`--text`, `--templates` to try others). Image embeddings are computed
once per model and split, and kept in --cache.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

from taxoclip.classify import ImageEmbedder
from taxoclip.models import load_model
from taxoclip.taxonomy import Taxon
from taxoclip.textbank import TextBank

ORIGINAL = ("tinyimagenet", "butterflies", "seedlings", "flowers", "apple", "fish")
RANKS = ("species", "genus", "family", "order", "class")
DEPTH = {"kingdom": 1, "phylum": 2, "class": 3, "order": 4, "family": 5, "genus": 6, "species": 7}


def labelled_photos(root: Path, splits: list[str]) -> tuple[list[str], dict[str, tuple]]:
    """(shard paths, `shard.tar/key.jpg` -> (set, 7-rank label, label depth))."""
    shards, labels = [], {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        for split in splits:
            for tar in sorted(d.glob(f"{split}-*.tar")):
                shards.append(str(tar))
                with tarfile.open(tar) as tf:
                    for m in tf:
                        if m.name.endswith(".json"):
                            rec = json.load(tf.extractfile(m))
                            t = Taxon.from_record({k: rec.get(k, "") for k in ("kingdom", "phylum", "class", "order",
                                                                               "family", "genus", "species")})
                            labels[f"{tar}/{m.name[:-5]}.jpg"] = (rec["set"], t.ranks, DEPTH[rec["rank"]])
    return shards, labels


def image_features(model, shards: list[str], cache: Path) -> tuple[list[str], np.ndarray]:
    key = hashlib.sha1(json.dumps([model.fingerprint, shards]).encode()).hexdigest()[:16]
    path = cache / f"features-{key}.npz"
    if path.exists():
        data = np.load(path)
        return data["names"].tolist(), data["features"]
    names, vecs = [], []
    for name, vec, err in ImageEmbedder(model).embed_iter(shards, normalize=True, progress=True):
        if err:
            raise SystemExit(f"{name}: {err}")
        names.append(name)
        vecs.append(vec)
    feats = np.stack(vecs).astype(np.float32)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, names=np.array(names), features=feats)
    return names, feats


def bio_mini_taxa(root: Path) -> list[Taxon]:
    import pandas as pd

    df = pd.read_csv(root / "taxa.csv", dtype=str, keep_default_na=False)
    seen: dict[Taxon, None] = {}
    for rec in df.to_dict("records"):
        seen.setdefault(Taxon.from_record({k: rec[k] for k in ("kingdom", "phylum", "class", "order", "family",
                                                               "genus", "species", "common_name")}).with_common(""), None)
    return list(seen)


def top1_lineages(bank: TextBank, feats: np.ndarray, scale: float) -> list[tuple]:
    table = bank.table
    ranks = table[["kingdom", "phylum", "class", "order", "family", "genus", "species_epithet"]].to_numpy()
    out = []
    for i in range(0, len(feats), 256):
        _, idx = bank.top_k(torch.from_numpy(feats[i:i + 256]), 1, scale)
        out.extend(tuple(ranks[j]) for j in idx[:, 0].tolist())
    return out


def accuracy_table(sets, labels, depths, preds) -> dict[str, dict[str, float]]:
    """Per set: top-1 at each rank (None where no photo is labelled that deep)."""
    rows: dict[str, dict[str, list[int]]] = {}
    for s, y, d, p in zip(sets, labels, depths, preds):
        r = rows.setdefault(s, {k: [] for k in RANKS})
        r["species"].append(int(tuple(p) == tuple(y)))
        for rank in RANKS[1:]:
            k = DEPTH[rank]
            if d >= k:
                r[rank].append(int(tuple(p[:k]) == tuple(y[:k])))
    return {s: {k: (float(np.mean(v)) if v else None) for k, v in r.items()} | {"n": len(r["species"])}
            for s, r in rows.items()}


def markdown(title: str, table: dict) -> str:
    def f(v):
        return "" if v is None else f"{100 * v:.1f}"
    lines = [f"**{title}**", "", "| set | photos | species | genus | family | order | class |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for s in sorted(table, key=lambda s: (s not in ORIGINAL, ORIGINAL.index(s) if s in ORIGINAL else 0, s)):
        r = table[s]
        lines.append(f"| {s} | {r['n']} | " + " | ".join(f(r[k]) for k in RANKS) + " |")
    mean = {k: np.mean([table[s][k] for s in ORIGINAL if s in table and table[s][k] is not None]) for k in RANKS}
    lines.append("| **mean of the six original sets** | | " + " | ".join(f(mean[k]) for k in RANKS) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bio-mini", required=True, type=Path)
    ap.add_argument("--model", default="taxoclip-mini")
    ap.add_argument("--splits", default="val,test")
    ap.add_argument("--text", default=None, help="class text type (default: the model card's)")
    ap.add_argument("--templates", default=None, help="template set (default: the model card's)")
    ap.add_argument("--full", action=argparse.BooleanOptionalAction, default=True,
                    help="also score against the model's whole vocabulary (default on)")
    ap.add_argument("--cache", type=Path, default=Path("out/eval-cache"))
    ap.add_argument("--json", type=Path, help="write the numbers here too")
    args = ap.parse_args(argv)

    t0 = time.time()
    model = load_model(args.model, precision="fp32")
    shards, by_name = labelled_photos(args.bio_mini, args.splits.split(","))
    names, feats = image_features(model, shards, args.cache)
    sets, labels, depths = zip(*(by_name[n] for n in names))
    print(f"{len(feats)} photos embedded ({time.time() - t0:.0f} s)", file=sys.stderr)
    results = {}
    small = TextBank.from_taxa(model, bio_mini_taxa(args.bio_mini), text=args.text, templates=args.templates,
                               name="bio-mini taxa")
    results["bio-mini taxa"] = accuracy_table(sets, labels, depths, top1_lineages(small, feats, model.logit_scale))
    print(markdown(f"{args.model}: label set = the {len(small)} bio-mini taxa", results["bio-mini taxa"]))
    if args.full:
        full = TextBank.from_published(model=model)
        results["vocabulary"] = accuracy_table(sets, labels, depths, top1_lineages(full, feats, model.logit_scale))
        print()
        print(markdown(f"{args.model}: label set = its whole vocabulary ({len(full):,} taxa)", results["vocabulary"]))
    print(f"\n({time.time() - t0:.0f} s)", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

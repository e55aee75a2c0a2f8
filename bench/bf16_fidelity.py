"""Is the default precision safe? bf16 vs fp32 image embeddings and top-1 predictions.

    python bench/bf16_fidelity.py --model bioclip-2                 # ViT-L/14 (e.g. make_fake_hub's)
    python bench/bf16_fidelity.py --model runs/butterflies/export --taxa butterflies  # a trained model

Embeds bio-mini photos (validation splits) with the same model in fp32 and in bf16 and prints
the cosine between the two embeddings of each photo (min / mean). With `--taxa SET`, also
classifies the photos of that bio-mini set zero-shot over its own taxa in both precisions
and prints how often the top-1 answers agree.
"""
from __future__ import annotations

import argparse
import json
import tarfile
from pathlib import Path

import pandas as pd
import torch

from taxoclip.io import ImageLoader, find_images
from taxoclip.models import load_model
from taxoclip.textbank import TextBank

BIO_MINI = Path(__file__).resolve().parents[2] / "shared/data/bio-mini"


def refs_of(sets: list[str], limit: int):
    shards = [p for s in sets for p in sorted((BIO_MINI / s).glob("val-*.tar"))]
    refs, _ = find_images(shards)
    return refs[:limit]


def embed(model, refs, batch_size=32):
    loader = ImageLoader(refs, model.preprocess, batch_size=batch_size, draft=False)
    return torch.cat([model.encode_image(b.pixels) for b in loader])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bioclip-2")
    ap.add_argument("--taxa", help="a bio-mini set whose photos to classify among its own taxa (e.g. butterflies)")
    ap.add_argument("--limit", type=int, default=256, help="photos to embed (default 256)")
    args = ap.parse_args()

    sets = [args.taxa] if args.taxa else ["butterflies", "fish", "flowers", "seedlings", "apple"]
    refs = refs_of(sets, args.limit)
    fp32 = load_model(args.model, precision="fp32", text=bool(args.taxa))
    bf16 = load_model(args.model, precision="bf16", text=bool(args.taxa))
    a, b = embed(fp32, refs), embed(bf16, refs)
    cos = (a * b).sum(-1)
    print(f"{args.model}: {len(refs)} photos, cosine(bf16, fp32) min {cos.min():.5f} mean {cos.mean():.5f}")
    if args.taxa:
        taxa = pd.read_csv(BIO_MINI / "taxa.csv", dtype=str, keep_default_na=False)
        taxa = taxa[taxa.set == args.taxa].drop_duplicates(subset=["kingdom", "phylum", "class", "order", "family",
                                                                   "genus", "species"])
        bank32, bank16 = TextBank.from_taxa(fp32, taxa), TextBank.from_taxa(bf16, taxa)
        p32, i32 = bank32.top_k(a, 2, fp32.logit_scale)
        _, i16 = bank16.top_k(b, 1, bf16.logit_scale)
        top32, top16 = i32[:, 0], i16[:, 0]
        agree = (top32 == top16).float().mean().item()
        differ = top32 != top16
        if differ.any():  # how close fp32's own first and second answers were where the two differ
            gaps = (p32[differ, 0] - p32[differ, 1]).tolist()
            print(f"{int(differ.sum())} photos differ; fp32 probability gap between its top-1 and top-2 there: "
                  f"{', '.join(f'{g:.3f}' for g in sorted(gaps))}")
        truth = []
        for ref in refs:  # the label of each photo, from its JSON beside the JPEG in the shard
            with tarfile.open(ref.path) as tar:
                meta = json.load(tar.extractfile(ref.name.rsplit("/", 1)[1].replace(".jpg", ".json")))
            truth.append(meta["species"] or meta["genus"])
        names = bank32.label_data()
        pred32 = [names.species[i] or names.genus[i] for i in top32.tolist()]
        acc = sum(p == t for p, t in zip(pred32, truth)) / len(truth)
        print(f"zero-shot over {len(bank32)} {args.taxa} taxa: top-1 agreement bf16 vs fp32 {agree:.1%} "
              f"(fp32 top-1 accuracy {acc:.1%}, chance {1 / len(bank32):.1%})")


if __name__ == "__main__":
    main()

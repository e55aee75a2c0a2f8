"""Add my species, held out: how many photos per species does `taxoclip prototypes build` need,
and what does adding them cost the species the vocabulary already knows?

    python bench/bench_prototypes.py [--bio-mini DIR] [--sets lemurs,egu-fish,pollen,flowers17]
                                     [--shots 1,5] [--draws 3] [--known 2000]

Protocol (taxoclip-mini with its tol-mini vocabulary, 300,212 taxa):

- held-out species: every species-labelled taxon of `--sets`; their names are taken out of
  the vocabulary, so for the model they are new names;
- "my photos": k val + test photos per held-out species (drawn with seed = draw; photos the
  model was never trained on), written to a folder in the `metadata.csv` layout and turned
  into prototypes by `build_prototypes`, the function behind `taxoclip prototypes build`;
- queries: the held-out species' other val + test photos (as in the few-shot protocol, a
  species with k photos or fewer has a prototype but no queries), scored over the vocabulary
  with the prototypes merged in (`merge_prototypes`, `taxoclip predict --prototypes`); species
  top-1 counts when the top row names the photo's species;
- known species: `--known` val + test photos of the other sets' species (fixed sample; none of
  a held-out species), scored before and after the merge: what adding the prototypes costs them;
- peers on the same queries: the held-out species' own names left in the vocabulary (zero-shot
  text: what the model knows by name), the merge at other scales (1 = raw cosines, no
  calibration), and the prototypes alone (`--vocabulary DIR`: only the held-out species compete).

taxoclip-mini was trained on the training photos of every bio-mini set, these species' too:
they are new names to its vocabulary, not species it has never seen.

Prints Markdown tables (means over draws) and the similarities the calibration used.
"""
from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from taxoclip.evaluate import image_embeddings, load_datasets  # noqa: E402
from taxoclip.evaluate.datasets import RANK_NAMES  # noqa: E402
from taxoclip.evaluate.prototypes import (build_prototypes, calibrated_factor, load_prototypes,  # noqa: E402
                                          merge_prototypes)
from taxoclip.models import load_model  # noqa: E402
from taxoclip.textbank import TextBank  # noqa: E402


SCALES = (0.6, 0.8, 1.0)  # fixed prototype scales beside the calibrated one


def species_of(bank: TextBank) -> np.ndarray:
    t = bank.table
    g, e = t["genus"].astype(str).to_numpy(), t["species_epithet"].astype(str).to_numpy()
    return np.where(e != "", np.char.add(np.char.add(g.astype(str), " "), e.astype(str)), "")


def top1_species(bank: TextBank, feats: np.ndarray, scale: float) -> np.ndarray:
    names = species_of(bank)
    idx = np.concatenate([bank.top_k(torch.from_numpy(feats[i:i + 512]), 1, scale)[1][:, 0].numpy()
                          for i in range(0, len(feats), 512)])
    return names[idx]


def markdown(table: pd.DataFrame) -> str:
    def cell(c, v):
        if isinstance(v, float):
            return "" if v != v else (f"{100 * v:+.1f}" if "change" in c else f"{100 * v:.1f}")
        return str(v)
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(c, v) for c, v in zip(table.columns, r)) + " |"
                              for r in table.itertuples(index=False)])


def write_support(chosen: list, folder: Path) -> Path:
    """The chosen (dataset, row) training photos as one `metadata.csv` folder (what a user hands
    to `prototypes build`)."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    records = []
    for ds, i in chosen:
        ref = ds.refs[i]
        with open(ref.path, "rb") as f:
            f.seek(ref.offset)
            data = f.read(ref.size)
        name = f"img/{ds.name}-{i}.jpg"
        (folder / name).write_bytes(data)
        lab = ds.labels.iloc[i]
        records.append({"filepath": name, "class": lab["species"], **{r: lab[r] for r in RANK_NAMES if r != "class"},
                        "taxon_class": lab["class"], "common_name": lab["common_name"]})
    pd.DataFrame(records).to_csv(folder / "metadata.csv", index=False)
    return folder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bio-mini", type=Path, default=ROOT.parent / "shared" / "data" / "bio-mini")
    ap.add_argument("--sets", default="lemurs,egu-fish,pollen,flowers17")
    ap.add_argument("--shots", default="1,5")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--known", type=int, default=2000)
    args = ap.parse_args()
    held_sets = args.sets.split(",")
    shots = [int(s) for s in args.shots.split(",")]

    model = load_model("taxoclip-mini", precision="fp32")
    scale = model.logit_scale
    vocab = TextBank.from_published(model=model)
    vocab_species = species_of(vocab)
    evals = load_datasets([args.bio_mini])
    feats = {ds.name: image_embeddings(model, ds) for ds in evals}

    held, known_q, known_y = [], [], []  # held: (dataset, row, species) of each held-out photo
    for ds in evals:
        sp = ds.labels["species"].astype(str).to_numpy()
        ok = np.isin(sp, vocab_species) & (sp != "")
        if ds.name in held_sets:
            held += [(ds, i, sp[i]) for i in np.flatnonzero(ok)]
        else:
            known_q.append(feats[ds.name][ok])
            known_y.append(sp[ok])
    held_species = sorted({s for _, _, s in held})
    known_q, known_y = np.concatenate(known_q), np.concatenate(known_y)
    other = ~np.isin(known_y, held_species)  # a held-out species photographed in another set too is not "known"
    known_q, known_y = known_q[other], known_y[other]
    pick = np.random.default_rng(0).choice(len(known_q), min(args.known, len(known_q)), replace=False)
    known_q, known_y = known_q[pick], known_y[pick]
    base = vocab.subset(~np.isin(vocab_species, held_species))  # the held-out names are new to the model
    print(f"held out: {len(held_species)} species of {', '.join(held_sets)} ({len(held)} val + test photos); "
          f"known: {len(known_y)} val + test photos of {len(set(known_y))} species; vocabulary {len(base):,} "
          f"taxa without them", file=sys.stderr)
    known_before = (top1_species(base, known_q, scale) == known_y).mean()
    known_text = (top1_species(vocab, known_q, scale) == known_y).mean()

    rows, sweep, notes = [], [], []
    for k in shots:
        res: dict[str, list] = {}
        for draw in range(args.draws):
            rng = np.random.default_rng(draw)
            support, queries = [], []
            for sp in held_species:
                mine = [h for h in held if h[2] == sp]
                order = rng.permutation(len(mine))
                support += [mine[j] for j in order[:k]]
                queries += [mine[j] for j in order[k:]]
            q = np.stack([feats[ds.name][i] for ds, i, _ in queries])
            y = np.array([s for _, _, s in queries])
            with tempfile.TemporaryDirectory() as tmp:
                write_support([(ds, i) for ds, i, _ in support], Path(tmp) / "photos")
                t = time.perf_counter()
                build_prototypes(model, Path(tmp) / "photos", Path(tmp) / "protos", progress=False)
                built = time.perf_counter() - t
                protos = load_prototypes(Path(tmp) / "protos", model)
            factor = calibrated_factor(base, protos)
            notes.append((k, protos.prototype_similarity, factor, built, len(y)))
            res.setdefault("text", []).append(((top1_species(vocab, q, scale) == y).mean(), known_text))
            for name, f in (("calibrated", factor), *((f"x{g:g}", g) for g in SCALES)):
                merged = merge_prototypes(base, protos, factor=f)
                res.setdefault(name, []).append(((top1_species(merged, q, scale) == y).mean(),
                                                 (top1_species(merged, known_q, scale) == known_y).mean()))
            res.setdefault("alone", []).append(((top1_species(protos.bank, q, scale) == y).mean(), np.nan))
        n_q = int(np.mean([n for kk, *_, n in notes if kk == k]))
        for name, label in (("text", "their names in the vocabulary (zero-shot text, no photos)"),
                            ("calibrated", "prototypes merged, calibrated (`predict --prototypes`)"),
                            ("x1", "prototypes merged at raw cosine (no calibration)"),
                            ("alone", "prototypes alone (`--vocabulary`: only held-out species compete)")):
            h, kn = np.mean(res[name], axis=0)
            rows.append({"k": k, "setting": label, "queries": n_q, "held-out species top-1": h,
                         "known species top-1": kn})
        for name in ["calibrated"] + [f"x{g:g}" for g in SCALES]:
            h, kn = np.mean(res[name], axis=0)
            f = np.mean([n[2] for n in notes if n[0] == k]) if name == "calibrated" else float(name[1:])
            sweep.append({"k": k, "prototype scale": f"{f:.2f}" + (" (calibrated)" if name == "calibrated" else ""),
                          "held-out species top-1": h, "known species top-1": kn})

    print(f"known species, names removed and no prototypes: {100 * known_before:.1f} % top-1 "
          f"(their names in the vocabulary: {100 * known_text:.1f} %)\n")
    for table in (pd.DataFrame(rows), pd.DataFrame(sweep)):
        table["known species change"] = table["known species top-1"] - known_before
        print(markdown(table) + "\n")
    for k in shots:
        mine = [n for n in notes if n[0] == k]
        print(f"k = {k}: prototype similarity {np.mean([n[1] for n in mine]):.3f} (leave-one-out when k >= 2, else "
              f"the one-photo default), calibrated scale {np.mean([n[2] for n in mine]):.3f}; prototypes build "
              f"{np.mean([n[3] for n in mine]):.1f} s per draw")
    same = [float(np.mean((f @ f.T)[np.triu_indices(len(f), 1)]))
            for s in set(known_y) if (f := known_q[known_y == s]).shape[0] >= 2]
    print(f"mean same-species photo-to-photo cosine (known sample, {len(same)} species): {np.mean(same):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

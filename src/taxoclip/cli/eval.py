"""`taxoclip eval few-shot`: the paper's few-shot protocol on labelled image sets, as tables."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate models on labelled image sets (few-shot, as in the BioCLIP papers)")
    tasks = p.add_subparsers(title="evaluations", dest="task", metavar="TASK")
    fs = tasks.add_parser(
        "few-shot", help="SimpleShot nearest-centroid accuracy (CL2N), k-shot over folds",
        description="For each dataset and model: embed the images once (cached), then per fold f (seeded with f) "
                    "take `shots` random photos per class as support and the rest as queries; CL2N-normalise, "
                    "assign each query its nearest class centroid. Writes few-shot.csv and few-shot.md (one row per "
                    "model and k, one column per dataset and the mean).")
    fs.add_argument("datasets", nargs="+", help="folders: metadata.csv layout, <split>-*.tar shards, or a folder "
                                                "of such folders (bio-mini)")
    fs.add_argument("--model", action="append", help="model id (repeatable; default taxoclip-mini)")
    fs.add_argument("--random-init", action="store_true", help="add the first model's architecture with random weights")
    fs.add_argument("--shots", default="1,5", help="comma-separated k (default 1,5)")
    fs.add_argument("--folds", type=int, default=5, help="folds per k (default 5)")
    fs.add_argument("--method", default="simpleshot",
                    help="comma-separated: simpleshot (default), knn (nearest support photo), linear (logistic probe)")
    fs.add_argument("--splits", default="val,test", help="shard splits to read (default val,test)")
    fs.add_argument("--target", default="target",
                    help="the column to classify: target (the deepest taxon, default), a rank, label, or a trait")
    fs.add_argument("--out", default="results", help="folder for few-shot.csv/.md (default results/)")
    fs.set_defaults(func=run_few_shot)
    zs = tasks.add_parser(
        "zero-shot", help="zero-shot accuracy at every rank, against the sets' own taxa or a whole vocabulary",
        description="For each dataset and model: embed the images once (cached), embed the class texts, and score "
                    "top-1 at species (the whole label), genus, family, order, class, phylum, kingdom and species "
                    "top-5. Writes zero-shot.csv/.md (species top-1: one row per model, one column per dataset and "
                    "the mean) and zero-shot-ranks.csv (every rank).")
    zs.add_argument("datasets", nargs="+", help="folders, as for few-shot")
    zs.add_argument("--model", action="append", help="model id (repeatable; default taxoclip-mini)")
    zs.add_argument("--random-init", action="store_true", help="add the first model's architecture with random weights")
    zs.add_argument("--text", default=None,
                    help="class text type: sci, com, taxon, taxon_com, … or asis (the class names as written); "
                         "default: the model card's")
    zs.add_argument("--templates", default=None, help="bioclip (80 OpenAI + 1), openai, photo or none; default: the card's")
    zs.add_argument("--vocabulary", default="dataset",
                    help="label set: dataset (each set's own taxa, default), model (the model's whole vocabulary), "
                         "a taxa table (.csv/.parquet with rank columns) or a vocabulary path")
    zs.add_argument("--splits", default="val,test", help="shard splits to read (default val,test)")
    zs.add_argument("--out", default="results", help="folder for zero-shot.csv/.md (default results/)")
    zs.set_defaults(func=run_zero_shot)
    p.set_defaults(func=lambda args: p.print_help() or 0)


def _models(args: argparse.Namespace) -> list:
    """(label, loader) per model to evaluate: the --model ids, then the first one's random-init floor."""
    from ..evaluate import random_init_model
    from ..models import load_model

    ids = args.model or ["taxoclip-mini"]
    models = [(m, lambda m=m: load_model(m, precision="fp32")) for m in ids]
    if args.random_init:
        models.append((f"{ids[0]} (random init)", lambda: random_init_model(ids[0])))
    return models


def run_few_shot(args: argparse.Namespace) -> int:
    import sys
    import time
    from pathlib import Path

    import pandas as pd

    from ..errors import InputError
    from ..evaluate import few_shot, image_embeddings, load_datasets
    from ..evaluate.tables import results_table, write_table

    from ..evaluate.fewshot import METHODS

    shots = tuple(int(s) for s in args.shots.split(",") if s.strip())
    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InputError(f"--method {args.method}: expected some of {', '.join(METHODS)}")
    if not shots or min(shots) < 1:
        raise InputError(f"--shots {args.shots}: give positive integers")
    datasets = load_datasets(args.datasets, [s.strip() for s in args.splits.split(",")])
    models = _models(args)
    usable = []
    for ds in datasets:
        if len(set(ds.column(args.target).astype(str)) - {""}) < 2:
            print(f"dataset {ds.name}: {args.target} has fewer than two classes; left out", file=sys.stderr)
        else:
            usable.append(ds)
    if not usable:
        raise InputError(f"no dataset with two or more classes of {args.target}")
    datasets = usable
    rows = []
    for label, make in models:
        model = make()
        for ds in datasets:
            target = ds.column(args.target).astype(str).to_numpy()
            keep = target != ""
            feats = image_embeddings(model, ds)[keep]
            for method in methods:
                t = time.perf_counter()
                res = few_shot(feats, target[keep], shots, args.folds, method)
                print(f"{label} {ds.name} {method}: " + ", ".join(
                    f"{k}-shot {100 * r['mean']:.1f}±{100 * r['std']:.1f}" for k, r in res.items())
                    + f" ({time.perf_counter() - t:.1f} s)", file=sys.stderr)
                rows += [{"model": label, "method": method, "shots": k, "dataset": ds.name, "accuracy": r["mean"],
                          "std": r["std"]} for k, r in res.items()]
    long = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    long.to_csv(out / "few-shot-folds.csv", index=False)
    print(write_table(results_table(long, [d.name for d in datasets], ["model", "method", "shots"], "accuracy"), out,
                      "few-shot"), end="")
    return 0


def run_zero_shot(args: argparse.Namespace) -> int:
    import sys
    import time
    from pathlib import Path

    import pandas as pd

    from ..evaluate import image_embeddings, label_bank, load_datasets, zero_shot
    from ..evaluate.tables import results_table, write_table

    datasets = load_datasets(args.datasets, [s.strip() for s in args.splits.split(",")])
    if args.vocabulary == "dataset":  # one class is no test: a one-taxon label set is always right
        for ds in [d for d in datasets if len(set(d.labels["target"]) - {""}) < 2]:
            print(f"dataset {ds.name}: one class only; left out (score it with --vocabulary model)", file=sys.stderr)
        datasets = [d for d in datasets if len(set(d.labels["target"]) - {""}) >= 2]
        if not datasets:
            from ..errors import InputError

            raise InputError("no dataset with two or more classes")
    models = _models(args)
    rows = []
    for label, make in models:
        model = make()
        for ds in datasets:
            t = time.perf_counter()
            feats = image_embeddings(model, ds)
            bank = label_bank(model, ds, args.text, args.templates, args.vocabulary)
            res = zero_shot(model, ds, feats, bank)
            print(f"{label} {ds.name}: species top-1 {100 * res['top1']['species']:.1f}, top-5 {100 * res['top5']:.1f} "
                  f"({len(bank):,} classes, {time.perf_counter() - t:.1f} s)", file=sys.stderr)
            rows.append({"model": label, "dataset": ds.name, "photos": res["n"], "classes": len(bank),
                         **{f"top1_{r}": v for r, v in res["top1"].items()}, "top5_species": res["top5"]})
    long = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    long.to_csv(out / "zero-shot-ranks.csv", index=False)
    print(write_table(results_table(long, [d.name for d in datasets], ["model"], "top1_species"), out, "zero-shot"),
          end="")
    return 0

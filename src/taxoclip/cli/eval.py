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
    from pathlib import Path

    from ..evaluate import load_datasets
    from ..evaluate.runs import few_shot_runs, with_classes
    from ..evaluate.tables import results_table, write_table

    datasets = with_classes(load_datasets(args.datasets, _split(args.splits)), args.target)
    long = few_shot_runs(datasets, _models(args), shots=[int(s) for s in _split(args.shots)], folds=args.folds,
                         methods=_split(args.method), target=args.target, report=_report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    long.to_csv(out / "few-shot-folds.csv", index=False)
    print(write_table(results_table(long, [d.name for d in datasets], ["model", "method", "shots"], "accuracy"), out,
                      "few-shot"), end="")
    return 0


def run_zero_shot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..evaluate import load_datasets
    from ..evaluate.runs import with_classes, zero_shot_runs
    from ..evaluate.tables import results_table, write_table

    datasets = load_datasets(args.datasets, _split(args.splits))
    if args.vocabulary == "dataset":  # against its own single taxon a one-class set is always right
        datasets = with_classes(datasets, "target", " (score it with --vocabulary model)")
    long = zero_shot_runs(datasets, _models(args), text=args.text, templates=args.templates, vocabulary=args.vocabulary,
                          report=_report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    long.to_csv(out / "zero-shot-ranks.csv", index=False)
    print(write_table(results_table(long, [d.name for d in datasets], ["model"], "top1_species"), out, "zero-shot"),
          end="")
    return 0


def _report(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]

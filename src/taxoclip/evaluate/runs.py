"""Evaluations of several models on several datasets: the loops every front end runs, giving
long tables (one row per model x setting x dataset) that `tables.results_table` pivots."""
from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

import pandas as pd

from ..errors import InputError
from .datasets import EvalDataset
from .embeddings import image_embeddings
from .fewshot import METHODS, few_shot
from .zeroshot import label_bank, zero_shot

__all__ = ["ModelSpec", "with_classes", "few_shot_runs", "zero_shot_runs"]

log = logging.getLogger(__name__)

# (label for the tables, a function that loads the model): models load one at a time
ModelSpec = tuple[str, Callable]


def with_classes(datasets: Sequence[EvalDataset], column: str, why: str = "") -> list[EvalDataset]:
    """The datasets whose `column` holds two classes or more; the others are named in the log
    (one class is no test). Raises InputError when none is left."""
    kept = []
    for ds in datasets:
        if len(set(ds.column(column).astype(str)) - {""}) < 2:
            log.warning("dataset %s: %s has fewer than two classes; left out%s", ds.name, column, why)
        else:
            kept.append(ds)
    if not kept:
        raise InputError(f"no dataset with two or more classes of {column}")
    return kept


def few_shot_runs(datasets: Sequence[EvalDataset], models: Sequence[ModelSpec], *, shots: Sequence[int] = (1, 5),
                  folds: int = 5, methods: Sequence[str] = ("simpleshot",), target: str = "target",
                  report: Callable[[str], None] = log.info) -> pd.DataFrame:
    """Columns model, method, shots, dataset, accuracy, std (fractions); `report` gets a line per result."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InputError(f"few-shot methods {', '.join(methods) or '(none)'}: expected some of {', '.join(METHODS)}")
    if not shots or min(shots) < 1:
        raise InputError(f"shots {list(shots)}: give positive integers")
    rows = []
    for label, make in models:
        model = make()
        for ds in datasets:
            classes = ds.column(target).astype(str).to_numpy()
            keep = classes != ""
            feats = image_embeddings(model, ds)[keep]
            for method in methods:
                t = time.perf_counter()
                res = few_shot(feats, classes[keep], tuple(shots), folds, method)
                report(f"{label} {ds.name} {method}: " + ", ".join(
                    f"{k}-shot {100 * r['mean']:.1f}±{100 * r['std']:.1f}" for k, r in res.items())
                    + f" ({time.perf_counter() - t:.1f} s)")
                rows += [{"model": label, "method": method, "shots": k, "dataset": ds.name, "accuracy": r["mean"],
                          "std": r["std"]} for k, r in res.items()]
    return pd.DataFrame(rows)


def zero_shot_runs(datasets: Sequence[EvalDataset], models: Sequence[ModelSpec], *, text: str | None = None,
                   templates: str | None = None, vocabulary: str = "dataset",
                   report: Callable[[str], None] = log.info) -> pd.DataFrame:
    """Columns model, dataset, photos, classes, top1_<rank> for every rank, top5_species."""
    rows = []
    for label, make in models:
        model = make()
        for ds in datasets:
            t = time.perf_counter()
            feats = image_embeddings(model, ds)
            bank = label_bank(model, ds, text, templates, vocabulary)
            res = zero_shot(model, ds, feats, bank)
            report(f"{label} {ds.name}: species top-1 {100 * res['top1']['species']:.1f}, top-5 "
                   f"{100 * res['top5']:.1f} ({len(bank):,} classes, {time.perf_counter() - t:.1f} s)")
            rows.append({"model": label, "dataset": ds.name, "photos": res["n"], "classes": len(bank),
                         **{f"top1_{r}": v for r, v in res["top1"].items()}, "top5_species": res["top5"]})
    return pd.DataFrame(rows)

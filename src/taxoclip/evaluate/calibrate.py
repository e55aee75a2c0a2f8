"""`taxoclip calibrate`: fit a model's temperature on labelled photos and report it on held-out ones.

Photos whose species is in the vocabulary are split in two by a hash of their name (stable
across runs): the temperature is fitted on one half, and NLL, expected calibration error and
a reliability table before and after are measured on the other.
"""
from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np
import torch

from ..decide.calibration import (TEMPERATURES, Calibration, expected_calibration_error, fit_temperature,
                                  reliability, temperature_curve)
from ..decide.provenance import vocabulary_identity
from ..errors import InputError
from .datasets import load_datasets
from .embeddings import image_embeddings

__all__ = ["calibrate"]


def calibrate(model: str, datasets: Sequence[str], *, vocabulary: str | None = None,
              splits: Sequence[str] = ("val",), progress: bool | None = None) -> Calibration:
    from ..classify import TreeOfLifeClassifier

    clf = TreeOfLifeClassifier(model, vocabulary=vocabulary, precision="fp32")
    species = clf.bank.label_data()["species"]
    first_row = {s: i for i, s in reversed(list(enumerate(species))) if s}
    feats, targets, names, used = [], [], [], []
    for ds in load_datasets(datasets, splits):
        emb = image_embeddings(clf.model, ds, progress=progress)
        label = ds.labels["species"].astype(str) if "species" in ds.labels.columns else None
        if label is None:
            continue
        rows = np.array([first_row.get(s, -1) for s in label])
        keep = rows >= 0
        if keep.any():
            used.append(ds.name)
        feats.append(emb[keep])
        targets.append(rows[keep])
        names += list(ds.labels["file_name"][keep])
    if not names:
        raise InputError(f"no labelled photo of {', '.join(map(str, datasets))} has a species in vocabulary "
                         f"{clf.bank.name}")
    feats_t = torch.from_numpy(np.concatenate(feats))
    targets_a = np.concatenate(targets)
    held = np.array([zlib.crc32(n.encode()) % 2 == 1 for n in names])
    if held.all() or not held.any():
        raise InputError(f"need at least two labelled photos to fit and check a temperature (have {len(names)})")
    scale = clf.model.logit_scale
    nll, _ = temperature_curve(clf.bank, feats_t[~held], targets_a[~held], scale)
    t = fit_temperature(nll, TEMPERATURES)
    check = np.array([1.0, t])
    nll_h, stats = temperature_curve(clf.bank, feats_t[held], targets_a[held], scale, check)
    report = {}
    for j, key in enumerate(("before", "after")):
        conf = stats["confidence"][j]
        report[key] = {"temperature": float(check[j]), "nll": float(nll_h[j]),
                       "ece": expected_calibration_error(conf, stats["correct"]),
                       "accuracy": float(stats["correct"].mean()), "reliability": reliability(conf, stats["correct"])}
    return Calibration(model=clf.model.id, weights_hash=clf.model.source.fingerprint,
                       vocabulary=vocabulary_identity(clf.bank), temperature=t, photos_fit=int((~held).sum()),
                       photos_held_out=int(held.sum()), datasets=used, held_out=report)

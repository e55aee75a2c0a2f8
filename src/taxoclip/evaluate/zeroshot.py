"""Zero-shot classification of an evaluation set, scored at every rank.

The label set is the set's own taxa (each distinct labelled lineage, whatever rank it stops
at) or a whole vocabulary (open-vocabulary: e.g. the model's 300K-species tol-mini). Class
texts are a caption type (`sci`, `com`, `taxon`, `taxon_com`, … as in training) or `asis`
(the set's class names as written), through a template set (`bioclip`: the 80 OpenAI
templates plus "a photo of {}."; `photo`; `none`). A photo is right at a rank when the
predicted taxon's lineage down to that rank equals its label's, counted over the photos
labelled at least that deep; species top-1/top-5 ask for the whole label.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..taxonomy import Taxon
from ..textbank import TextBank
from .datasets import RANK_NAMES, EvalDataset

__all__ = ["zero_shot", "label_bank"]

_LINEAGE = ["kingdom", "phylum", "class", "order", "family", "genus", "species_epithet"]


def _taxa(labels: pd.DataFrame) -> list[Taxon]:
    seen: dict[Taxon, None] = {}
    for rec in labels[RANK_NAMES].to_dict("records"):
        seen.setdefault(Taxon.from_record(rec), None)
    return list(seen)


def label_bank(model, dataset: EvalDataset, text: str | None = None, templates: str | None = None,
               vocabulary: str = "dataset") -> TextBank:
    """The class embeddings to score against (see the module's docstring)."""
    if vocabulary == "model":
        return TextBank.from_published(model=model)
    if str(vocabulary).lower().endswith((".csv", ".parquet")):  # a taxa table (e.g. bio-mini's taxa.csv)
        return TextBank.from_taxa(model, vocabulary, text=text, templates=templates)
    if vocabulary != "dataset":
        return TextBank.from_published(vocabulary, model=model)
    if text == "asis":
        names = sorted(set(dataset.labels["target"]) - {""})
        return TextBank.from_labels(model, names, templates=templates or "bioclip")
    return TextBank.from_taxa(model, _taxa(dataset.labels), text=text, templates=templates, name=dataset.name)


def _lineages(bank: TextBank) -> np.ndarray:
    t = bank.table
    if "label" in t.columns:
        return t["label"].astype(str).to_numpy()[:, None]
    return t[_LINEAGE].astype(str).to_numpy()


def zero_shot(model, dataset: EvalDataset, feats: np.ndarray, bank: TextBank, k: int = 5) -> dict:
    """{"n", "top1": {rank: accuracy or None}, "top5": species top-k accuracy}."""
    scale = model.logit_scale
    rows = _lineages(bank)
    idx = np.concatenate([bank.top_k(torch.from_numpy(feats[i:i + 256]), k, scale)[1].numpy()
                          for i in range(0, len(feats), 256)])
    labels = dataset.labels
    if rows.shape[1] == 1:  # `asis`: class names, no ranks
        target = labels["target"].astype(str).to_numpy()
        pred = rows[idx, 0]
        return {"n": len(target), "top1": {"species": float((pred[:, 0] == target).mean())},
                "top5": float((pred == target[:, None]).any(1).mean())}
    truth = labels[RANK_NAMES].astype(str).to_numpy().copy()
    genus_epithet = np.char.partition(truth[:, 6].astype(str), " ")[:, 2]  # "Genus epithet" -> "epithet"
    truth[:, 6] = genus_epithet
    depth = labels["depth"].to_numpy()
    pred = rows[idx]  # [N, k, 7]
    full = (pred == truth[:, None, :]).all(-1)  # [N, k]: the whole label
    top1 = {"species": float(full[:, 0].mean())}
    for name, d in (("genus", 6), ("family", 5), ("order", 4), ("class", 3), ("phylum", 2), ("kingdom", 1)):
        ok = depth >= d
        top1[name] = float((pred[ok, 0, :d] == truth[ok, :d]).all(-1).mean()) if ok.any() else None
    return {"n": int(len(truth)), "top1": top1, "top5": float(full.any(1).mean())}

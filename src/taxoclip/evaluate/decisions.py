"""How good are decisions: precision at the answered rank against coverage, on labelled photos.

Also the peer rule to compare with, SpeciesNet's: from the top-5 species only, sum the
scores of those sharing a lineage at each rank (species, genus, family, order, class,
kingdom) and answer at the first whose best sum reaches a fixed 0.65.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from ..decide.rule import Thresholds, decide_table
from ..decide.scores import LEVELS, SEP, score_batch
from .datasets import EvalDataset
from .embeddings import image_embeddings

__all__ = ["score_dataset", "correct", "risk_coverage", "speciesnet_rule", "choose_thresholds", "SPECIESNET"]

SPECIESNET = {"threshold": 0.65, "top": 5, "levels": ["species", "genus", "family", "order", "class", "kingdom"]}


def score_dataset(clf, ds: EvalDataset, candidates: int = 20, groups: int = 5, batch: int = 64) -> pa.Table:
    """Score rows for a labelled set (its embeddings cached, as every evaluation's)."""
    feats = torch.from_numpy(image_embeddings(clf.model, ds))
    names = ds.labels["file_name"].tolist()
    parts = [score_batch(clf.bank, names[s:s + batch], clf.bank.masses(feats[s:s + batch], clf.scale, candidates,
                                                                       groups))
             for s in range(0, len(names), batch)]
    return pa.concat_tables(parts)


def _truth(labels: pd.DataFrame, level: str) -> pd.Series:
    col = "species" if level == "species" else level
    return labels[col].astype(str).str.strip().str.lower() if col in labels.columns else pd.Series([""] * len(labels))


def correct(decisions: pd.DataFrame, labels: pd.DataFrame) -> np.ndarray:
    """Is each answer the photo's own taxon at the answered rank (names compared case-insensitively)?"""
    out = np.zeros(len(decisions), dtype=bool)
    pred = decisions["prediction"].fillna("").astype(str).str.lower().to_numpy()
    rank = decisions["prediction_rank"].fillna("").to_numpy()
    for level in LEVELS:
        sel = rank == level
        out[sel] = pred[sel] == _truth(labels, level).to_numpy()[sel]
    return out


def risk_coverage(decisions: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Per rank: share of photos answered there, precision there, and both for that rank or deeper."""
    ok = correct(decisions, labels)
    rank = decisions["prediction_rank"].fillna("").to_numpy()
    n = max(len(decisions), 1)
    rows = []
    for i, level in enumerate(LEVELS):
        at = rank == level
        deep = np.isin(rank, LEVELS[: i + 1])
        rows.append({"rank": level, "answered": at.sum() / n, "precision": ok[at].mean() if at.any() else np.nan,
                     "answered_here_or_deeper": deep.sum() / n,
                     "precision_here_or_deeper": ok[deep].mean() if deep.any() else np.nan})
    return pd.DataFrame(rows)


def speciesnet_rule(table: pa.Table, threshold: float = SPECIESNET["threshold"],
                    top: int = SPECIESNET["top"]) -> pd.DataFrame:
    """SpeciesNet's roll-up on the same scores: only the top-`top` species count."""
    species = table.column("species").to_pylist()
    probs = table.column("species_p").to_pylist()
    depth = {"species": 7, "genus": 6, "family": 5, "order": 4, "class": 3, "kingdom": 1}
    out = []
    for keys, ps in zip(species, probs):
        keys, ps = (keys or [])[:top], (ps or [])[:top]
        answer = ("", "", np.nan)
        for level in SPECIESNET["levels"]:
            sums: dict[str, float] = {}
            for k, p in zip(keys, ps):
                parts = k.split(SEP)
                name = f"{parts[5]} {parts[6]}" if level == "species" else parts[depth[level] - 1]
                if level == "species" and not (parts[5] and parts[6]) or not name:
                    continue
                prefix = SEP.join(parts[: depth[level]])
                sums[prefix] = sums.get(prefix, 0.0) + p
            if sums:
                best = min(sums, key=lambda x: (-sums[x], x))  # ties: the lineage that sorts first
                if sums[best] >= threshold:
                    parts = best.split(SEP)
                    answer = (f"{parts[5]} {parts[6]}" if level == "species" else parts[-1], level, sums[best])
                    break
        out.append(answer)
    return pd.DataFrame(out, columns=["prediction", "prediction_rank", "prediction_score"])


def choose_thresholds(table: pa.Table, labels: pd.DataFrame, target: float = 0.95, min_photos: int = 20,
                      grid: Sequence[float] = tuple(np.round(np.arange(0.3, 0.96, 0.05), 2))) -> dict[str, float]:
    """Per rank, species first: the lowest threshold that keeps the precision of all answers at
    that rank or deeper at `target` on these photos, so each rank answers as many of the photos
    left to it as that precision allows (selective classification: least coverage lost for the risk)."""
    chosen: dict[str, float] = {}
    for i, level in enumerate(LEVELS):
        best = float(grid[-1])
        for t in grid:
            trial = Thresholds({**{lv: 1.01 for lv in LEVELS}, **chosen, level: float(t)})
            d = decide_table(table, _policy(trial))
            answered = d["prediction_rank"].isin(LEVELS[: i + 1]).to_numpy()
            at = (d["prediction_rank"] == level).to_numpy()
            if at.sum() >= min_photos and correct(d, labels)[answered].mean() >= target:
                best = float(t)
                break
        chosen[level] = best
    return chosen


def _policy(thresholds: Thresholds):
    from ..decide.rule import Policy

    return Policy(thresholds)

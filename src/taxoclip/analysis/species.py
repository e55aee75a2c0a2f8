"""Species centroids and the between-species subspace: what every emergent-property analysis
compares photos against."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import InputError

__all__ = ["RANKS", "unit", "centroids", "species_subspace", "lineage_keys"]

RANKS = ["kingdom", "phylum", "class", "order", "family", "genus", "species"]


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def lineage_keys(labels: pd.DataFrame, depth: int = 7) -> pd.Series:
    """Each photo's lineage down to rank `depth` (1 = kingdom … 7 = species) as one string;
    "" where the label stops above that rank."""
    cols = RANKS[:depth]
    values = labels[cols].astype(str)
    key = values.agg(";".join, axis=1)
    return key.where(values[cols[-1]].str.strip() != "", "")


def centroids(emb: np.ndarray, labels: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """Unit species centroids [S, D] and each species' lineage and photo count (photos labelled
    to species only)."""
    if "species" not in labels.columns:
        raise InputError("no photo is labelled to species (no species column)")
    key = lineage_keys(labels)
    keep = (key != "").to_numpy()
    if keep.sum() == 0:
        raise InputError("no photo is labelled to species")
    codes, uniques = pd.factorize(key[keep])
    e = unit(emb[keep].astype(np.float64))
    c = np.zeros((len(uniques), e.shape[1]))
    np.add.at(c, codes, e)
    lineage = pd.DataFrame([u.split(";") for u in uniques], columns=RANKS)
    lineage["photos"] = np.bincount(codes)
    return unit(c), lineage


def species_subspace(c: np.ndarray, k: int) -> np.ndarray:
    """[k, D] orthonormal basis of the top-k principal components of the species centroids."""
    _, _, vt = np.linalg.svd(c - c.mean(0), full_matrices=False)
    return vt[:k]

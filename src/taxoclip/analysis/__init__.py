"""Emergent properties of an embedding space, measured on labelled photos (BioCLIP 2's claims).

- `hierarchy`: species that share more of their lineage should have more similar centroids.
  Mean centroid cosine per deepest shared rank, and Spearman's rho between shared depth
  and cosine over all pairs of species.
- `trait_orthogonality`: variation within a species (sex, life stage, health …) should lie
  in directions nearly orthogonal to the differences between species. Per species, each
  trait group's mean minus the species mean is a within-species direction; the share of its
  squared length inside the span of the top principal components of the species centroids
  is compared with what a random direction would have (k / D) and with what the
  between-species differences themselves have.
- `trait_ordering`: species should line up by a numeric trait (e.g. body length) along an
  axis found without the trait: Spearman's rho between each species' mean trait value and
  its centroid's position on the first principal component of the centroids.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import InputError

__all__ = ["centroids", "hierarchy", "trait_orthogonality", "trait_ordering"]

RANKS = ["kingdom", "phylum", "class", "order", "family", "genus", "species"]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def centroids(emb: np.ndarray, labels: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """Unit species centroids [S, D] and each species' lineage (photos labelled to species only)."""
    sp = labels["species"].astype(str) if "species" in labels.columns else pd.Series([""] * len(labels))
    keep = (sp != "").to_numpy()
    if keep.sum() == 0:
        raise InputError("no photo is labelled to species")
    key = labels.loc[keep, RANKS].astype(str).agg(";".join, axis=1)
    codes, uniques = pd.factorize(key)
    e = _unit(emb[keep].astype(np.float64))
    c = np.zeros((len(uniques), e.shape[1]))
    np.add.at(c, codes, e)
    lineage = pd.DataFrame([u.split(";") for u in uniques], columns=RANKS)
    lineage["photos"] = np.bincount(codes)
    return _unit(c), lineage


def hierarchy(emb: np.ndarray, labels: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """(per deepest shared rank: species pairs and mean centroid cosine; Spearman rho of depth vs cosine)."""
    from scipy.stats import spearmanr

    c, lin = centroids(emb, labels)
    if len(c) < 3:
        raise InputError(f"need at least 3 species for a hierarchy analysis, have {len(c)}")
    i, j = np.triu_indices(len(c), 1)
    cos = np.einsum("pd,pd->p", c[i], c[j])
    values = lin[RANKS[:-1]].to_numpy()
    same = values[i] == values[j]
    depth = np.where(same.all(1), 6, np.argmin(np.concatenate([same, np.zeros((len(i), 1), bool)], 1), 1))
    names = ["different kingdom", "same kingdom", "same phylum", "same class", "same order", "same family",
             "same genus"]
    rows = [{"shared": names[d], "pairs": int((depth == d).sum()),
             "mean_cosine": float(cos[depth == d].mean()) if (depth == d).any() else np.nan} for d in range(7)]
    rho = float(spearmanr(depth, cos).statistic)
    return pd.DataFrame(rows), rho


def _subspace(c: np.ndarray, k: int) -> np.ndarray:
    centred = c - c.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return vt[:k]


def trait_orthogonality(emb: np.ndarray, labels: pd.DataFrame, trait: pd.Series, k: int = 10) -> dict:
    """Share of within-species trait variation inside the between-species subspace (see the module docstring)."""
    c, lin = centroids(emb, labels)
    if len(c) < 3:
        raise InputError(f"need at least 3 species to span a between-species subspace, have {len(c)} "
                         "(give several datasets: they are pooled)")
    k = max(1, min(k, len(c) - 1))
    basis = _subspace(c, k)
    sp = labels["species"].astype(str).to_numpy()
    t = trait.astype(str).to_numpy()
    e = _unit(emb.astype(np.float64))
    shares, n_species = [], 0
    for s in np.unique(sp[sp != ""]):
        mine = sp == s
        groups = [g for g in np.unique(t[mine]) if g not in ("", "nan", "None")]
        if len(groups) < 2:
            continue
        n_species += 1
        mean = e[mine].mean(0)
        for g in groups:
            d = e[mine & (t == g)].mean(0) - mean
            if np.linalg.norm(d) > 1e-9:
                shares.append(float(np.sum((basis @ d) ** 2) / np.sum(d ** 2)))
    if not shares:
        raise InputError("no species has photos with two or more values of this trait")
    between = c - c.mean(0)
    between_share = float(np.mean(np.sum((between @ basis.T) ** 2, 1) / np.maximum(np.sum(between ** 2, 1), 1e-12)))
    return {"species": n_species, "directions": len(shares), "k": k, "dim": emb.shape[1],
            "within_species_share": float(np.mean(shares)), "random_share": k / emb.shape[1],
            "between_species_share": between_share}


def trait_ordering(emb: np.ndarray, labels: pd.DataFrame, trait: pd.Series) -> dict:
    """Spearman rho between species' mean numeric trait and their position on the centroids' first PC."""
    from scipy.stats import spearmanr

    values = pd.to_numeric(trait, errors="coerce")
    ok = values.notna().to_numpy()
    if ok.sum() < 3:
        raise InputError("the trait has fewer than 3 numeric values")
    c, lin = centroids(emb[ok], labels[ok].reset_index(drop=True))
    key = labels.loc[ok, RANKS].astype(str).agg(";".join, axis=1)
    mean_value = values[ok].groupby(key.to_numpy()).mean()
    order = lin[RANKS].astype(str).agg(";".join, axis=1)
    y = mean_value.reindex(order).to_numpy()
    axis = _subspace(c, 1)[0]
    x = (c - c.mean(0)) @ axis
    res = spearmanr(x, y)
    return {"species": len(c), "rho": float(abs(res.statistic)), "p_value": float(res.pvalue)}

"""Do species line up by a numeric trait (body length, beak size) in embedding space, without
being told what the trait is?

`trait_ordering` finds the direction of species-centroid space best aligned with the trait
(ridge regression, centroid -> mean trait value, its penalty chosen by leave-one-out on the
training species) on some species and places the others on it: k-fold cross-validation across species, so a species' position never comes from a fit
that saw it and with D > S a perfect fit cannot pass for an ordering. The score is Spearman's
rho between the held-out positions and the true values; its p-value is a permutation test
(the values shuffled among species, the whole cross-validation repeated). The first principal
component's rho (an axis found without the trait at all) is reported beside it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import InputError
from .species import centroids, lineage_keys, species_subspace

__all__ = ["trait_ordering"]

ALPHAS = np.logspace(-3, 3, 13)


class _FoldRidge:
    """Ridge regression (with intercept) fitted on one fold's training species, for any target
    vector: the SVD is taken once, so each of the permutation test's refits is a few matrix
    products. The penalty is chosen per target from `ALPHAS` by leave-one-out error on the
    training species (closed form from the hat matrix)."""

    def __init__(self, x_train: np.ndarray, x_test: np.ndarray):
        self.mean = x_train.mean(0)
        self.u, self.s, vt = np.linalg.svd(x_train - self.mean, full_matrices=False)
        self.test = (x_test - self.mean) @ vt.T

    def predict(self, y: np.ndarray) -> np.ndarray:
        yc = y - y.mean()
        uty = self.u.T @ yc
        s2 = self.s ** 2
        best, coef = np.inf, None
        for a in ALPHAS:
            shrink = s2 / (s2 + a)
            hat = (self.u ** 2) @ shrink + 1 / len(y)  # diagonal of the hat matrix, intercept included
            loo = np.mean(((yc - self.u @ (shrink * uty)) / np.maximum(1 - hat, 1e-9)) ** 2)
            if loo < best:
                best, coef = loo, self.s / (s2 + a) * uty
        return y.mean() + self.test @ coef


def _cv_positions(fits: list[tuple[_FoldRidge, np.ndarray, np.ndarray]], y: np.ndarray) -> np.ndarray:
    out = np.empty(len(y))
    for fit, tr, te in fits:
        out[te] = fit.predict(y[tr])
    return out


def trait_ordering(emb: np.ndarray, labels: pd.DataFrame, trait: pd.Series, folds: int = 5,
                   permutations: int = 999, seed: int = 0) -> tuple[dict, pd.DataFrame]:
    """({species, rho, p_value, pc1_rho, pc1_p_value}, one row per species: value, position).

    `trait` is numeric per photo; a species' value is the mean over its photos."""
    from scipy.stats import spearmanr
    from sklearn.model_selection import KFold

    values = pd.to_numeric(trait, errors="coerce")
    if values.notna().sum() == 0:
        raise InputError(f"trait {trait.name}: no numeric values (is it a categorical trait? use `traits`)")
    ok = (values.notna() & (lineage_keys(labels) != "")).to_numpy()
    sub = labels[ok].reset_index(drop=True)
    c, lin = centroids(np.asarray(emb)[ok], sub)
    if len(c) < 4:
        raise InputError(f"trait {trait.name}: {len(c)} species with numeric values; ordering needs at least 4")
    per_species = values[ok].groupby(lineage_keys(sub).to_numpy()).mean()
    y = per_species.reindex(lin[list(lin.columns[:7])].astype(str).agg(";".join, axis=1)).to_numpy()
    fits = [(_FoldRidge(c[tr], c[te]), tr, te)
            for tr, te in KFold(min(folds, len(c)), shuffle=True, random_state=seed).split(c)]
    pos = _cv_positions(fits, y)
    rho = float(spearmanr(pos, y).statistic)
    rng = np.random.default_rng(seed)
    null = np.array([spearmanr(_cv_positions(fits, p), p).statistic
                     for p in (rng.permutation(y) for _ in range(permutations))])
    pc1 = (c - c.mean(0)) @ species_subspace(c, 1)[0]
    pc = spearmanr(pc1, y)
    summary = {"species": len(c), "rho": rho, "p_value": float((1 + np.sum(null >= rho)) / (1 + permutations)),
               "pc1_rho": float(abs(pc.statistic)), "pc1_p_value": float(pc.pvalue)}
    table = pd.DataFrame({"species": lin["species"], "value": y, "position": pos})
    return summary, table

"""Is variation within a species (health, sex, life stage, caste …) kept apart from the
differences between species?

- `trait_orthogonality`: per species with photos of two or more trait values, each value's
  mean photo minus the species' mean photo is a *within-species direction* d. Its alignment
  with the between-species subspace B (the top-k principal components of the species
  centroids) is |cos(d, B)| = ||P_B d|| / ||d||, the cosine between d and its projection on
  B: 1 = inside B, 0 = orthogonal to it. Reported: the mean over directions; the same for the
  centred species centroids themselves (what "aligned with species differences" looks like);
  for random directions in the space (what chance looks like: about sqrt(k / D)); and for the
  trait values shuffled among each species' photos (directions made of photo-to-photo noise,
  with the same group sizes). Lower than shuffled = the trait moves photos away from the
  species subspace more than random photo differences do.
- `trait_separation`: is the trait still readable once species is removed? Each photo minus
  its species' mean photo (over the training fold), a logistic-regression probe (features scaled
  to unit spread by one factor, balanced class weights) predicting the trait, stratified k-fold cross-validation:
  balanced accuracy against chance (1 / values) and against the same probe on values shuffled
  within each species; and the AUC of held-out photos along each value's direction (its
  training photos' mean minus the others'), averaged over values: 0.5 = not separated.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import InputError
from .species import centroids, lineage_keys, species_subspace, unit

__all__ = ["trait_orthogonality", "trait_separation"]

MISSING = {"", "nan", "None", "<NA>"}


def _within(emb: np.ndarray, labels: pd.DataFrame, trait: pd.Series):
    """(unit photos, species key, trait value) of the photos of species with >= 2 trait values."""
    sp = lineage_keys(labels).to_numpy()
    t = trait.astype(str).to_numpy()
    keep = np.zeros(len(sp), dtype=bool)
    for s in np.unique(sp[sp != ""]):
        mine = (sp == s) & ~np.isin(t, list(MISSING))
        if len(set(t[mine])) >= 2:
            keep |= mine
    if not keep.any():
        raise InputError(f"no species has photos with two or more values of trait {trait.name or ''}".rstrip())
    return unit(np.asarray(emb, dtype=np.float64)[keep]), sp[keep], t[keep]


def _directions(e: np.ndarray, sp: np.ndarray, t: np.ndarray) -> np.ndarray:
    out = []
    for s in np.unique(sp):
        mine = sp == s
        mean = e[mine].mean(0)
        for g in np.unique(t[mine]):
            d = e[mine & (t == g)].mean(0) - mean
            if np.linalg.norm(d) > 1e-9:
                out.append(d)
    return np.array(out).reshape(-1, e.shape[1])


def _abs_cos(d: np.ndarray, basis: np.ndarray) -> float:
    return float(np.mean(np.linalg.norm(d @ basis.T, axis=1) / np.maximum(np.linalg.norm(d, axis=1), 1e-12)))


def _shuffle_within(sp: np.ndarray, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = t.copy()
    for s in np.unique(sp):
        idx = np.flatnonzero(sp == s)
        out[idx] = t[rng.permutation(idx)]
    return out


def trait_orthogonality(emb: np.ndarray, labels: pd.DataFrame, trait: pd.Series, k: int = 10,
                        shuffles: int = 20, seed: int = 0) -> dict:
    """Mean |cos| of within-species trait directions with the between-species subspace, and its
    references (see the module docstring)."""
    c, _ = centroids(emb, labels)
    if len(c) < 3:
        raise InputError(f"need at least 3 species to span a between-species subspace, have {len(c)} "
                         "(give several datasets: they are pooled)")
    k = max(1, min(k, len(c) - 1))
    basis = species_subspace(c, k)
    e, sp, t = _within(emb, labels, trait)
    d = _directions(e, sp, t)
    if not len(d):
        raise InputError(f"trait {trait.name}: its values' mean photos coincide; no direction to measure")
    rng = np.random.default_rng(seed)
    shuffled = [_abs_cos(_directions(e, sp, _shuffle_within(sp, t, rng)), basis) for _ in range(shuffles)]
    random = unit(rng.normal(size=(2000, emb.shape[1])))
    return {"species": len(set(sp)), "directions": len(d), "k": k, "dim": int(emb.shape[1]),
            "within_abs_cos": _abs_cos(d, basis), "shuffled_abs_cos": float(np.mean(shuffled)),
            "between_abs_cos": _abs_cos(c - c.mean(0), basis), "random_abs_cos": _abs_cos(random, basis)}


def trait_separation(emb: np.ndarray, labels: pd.DataFrame, trait: pd.Series, folds: int = 5,
                     seed: int = 0) -> dict:
    """Cross-validated within-species probe of the trait (see the module docstring). Values seen
    on one photo only are left out (nothing to hold out); `left_out` counts those photos."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    e, sp, t = _within(emb, labels, trait)
    values, counts = np.unique(t, return_counts=True)
    kept = np.isin(t, values[counts >= 2])
    e, sp, t = e[kept], sp[kept], t[kept]
    values, counts = np.unique(t, return_counts=True)
    if len(values) < 2:
        raise InputError(f"trait {trait.name}: fewer than two values with two photos or more; nothing to "
                         "cross-validate")
    split = StratifiedKFold(min(folds, int(counts.min())), shuffle=True, random_state=seed)

    def centred(rows: np.ndarray, fit: np.ndarray) -> np.ndarray:
        """Photos minus their species' mean over the training photos `fit` (held-out photos never
        shift the means they are measured against)."""
        out = e[rows].copy()
        for s in np.unique(sp[rows]):
            ref = fit[sp[fit] == s]
            out[sp[rows] == s] -= e[ref if len(ref) else rows[sp[rows] == s]].mean(0)
        return out

    def probe(y: np.ndarray) -> tuple[float, float]:
        pred, aucs = np.empty(len(y), dtype=object), []
        for tr, te in split.split(e, y):
            x_tr, x_te = centred(tr, tr), centred(te, tr)
            scale = max(float(x_tr.std()), 1e-12)  # one factor: the probe's regularisation sees unit-size
            model = LogisticRegression(max_iter=2000, class_weight="balanced")  # features, geometry kept
            pred[te] = model.fit(x_tr / scale, y[tr]).predict(x_te / scale)
            for g in values:
                inside = y[te] == g
                if inside.all() or not inside.any() or (y[tr] == g).all():
                    continue
                u = x_tr[y[tr] == g].mean(0) - x_tr[y[tr] != g].mean(0)
                aucs.append(roc_auc_score(inside, x_te @ u))
        return float(balanced_accuracy_score(y, pred.astype(str))), float(np.mean(aucs))

    acc, auc = probe(t)
    acc0, auc0 = probe(_shuffle_within(sp, t, np.random.default_rng(seed)))
    return {"species": len(set(sp)), "photos": len(t), "values": len(values), "left_out": int((~kept).sum()),
            "probe_balanced_accuracy": acc, "chance": 1 / len(values), "shuffled_probe": acc0,
            "direction_auc": auc, "shuffled_auc": auc0}

"""SimpleShot few-shot classification, as BioCLIP's evaluation runs it.

Per fold f (f = 0 … folds-1, the random generator seeded with f): each class's photos are
shuffled, the first `shots` are its support, the rest are queries. Features are CL2N-
normalised: the mean of all support features is subtracted, then each vector is scaled to
unit length. A class's centroid is the mean of its normalised support; a query is assigned
the nearest centroid (Euclidean; on a tie, the class that sorts first). A class with no more
photos than `shots` has a centroid but no queries. Accuracy is over all queries of a fold;
the result is the mean and standard deviation over folds.
"""
from __future__ import annotations

import numpy as np

__all__ = ["simpleshot_accuracy", "few_shot", "split_fold"]


def split_fold(classes: np.ndarray, shots: int, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(support positions, query positions) of one fold."""
    rng = np.random.default_rng(fold)
    support, query = [], []
    for c in np.unique(classes):  # sorted: the same draw order whatever the input order of classes
        idx = rng.permutation(np.flatnonzero(classes == c))
        support.append(idx[:shots])
        query.append(idx[shots:])
    return np.concatenate(support), np.concatenate(query)


def _cl2n(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    x = x - mean
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def simpleshot_accuracy(feats: np.ndarray, classes: np.ndarray, shots: int, fold: int) -> float:
    """Nearest-centroid accuracy on one fold (NaN when no class has a query)."""
    feats = np.asarray(feats, dtype=np.float64)
    classes = np.asarray(classes)
    sup, qry = split_fold(classes, shots, fold)
    if len(qry) == 0:
        return float("nan")
    mean = feats[sup].mean(axis=0)
    s, q = _cl2n(feats[sup], mean), _cl2n(feats[qry], mean)
    names, inv = np.unique(classes[sup], return_inverse=True)
    centroids = np.zeros((len(names), feats.shape[1]))
    np.add.at(centroids, inv, s)
    centroids /= np.bincount(inv, minlength=len(names))[:, None]
    d = ((q[:, None, :] - centroids[None, :, :]) ** 2).sum(-1) if len(q) * len(names) < 4_000_000 else \
        (q ** 2).sum(1)[:, None] - 2 * q @ centroids.T + (centroids ** 2).sum(1)[None, :]
    return float((names[d.argmin(axis=1)] == classes[qry]).mean())


def few_shot(feats: np.ndarray, classes: np.ndarray, shots: tuple[int, ...] = (1, 5), folds: int = 5) -> dict:
    """{shots: {"mean", "std", "folds": [...]}} over `folds` folds.

    A set where no class has more than k photos has no queries: mean and std are NaN."""
    out = {}
    for k in shots:
        accs = [simpleshot_accuracy(feats, classes, k, f) for f in range(folds)]
        done = [a for a in accs if a == a]
        out[k] = {"mean": float(np.mean(done)) if done else float("nan"),
                  "std": float(np.std(done)) if done else float("nan"), "folds": accs}
    return out

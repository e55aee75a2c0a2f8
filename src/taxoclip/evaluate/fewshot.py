"""SimpleShot few-shot classification, as BioCLIP's evaluation runs it.

Per fold f (f = 0 … folds-1, the random generator seeded with f): each class's photos are
shuffled, the first `shots` are its support, the rest are queries. Features are CL2N-
normalised: the mean of all support features is subtracted, then each vector is scaled to
unit length. A class's centroid is the mean of its normalised support; a query is assigned
the nearest centroid (Euclidean; on a tie, the class that sorts first). A class with no more
photos than `shots` has a centroid but no queries. Accuracy is over all queries of a fold;
the result is the mean and standard deviation over folds.

Two other classifiers run on the same folds and the same CL2N features: `knn` (the majority
of the `neighbors` nearest support photos; a tie goes to the nearest of the tied classes) and
`linear` (a logistic-regression probe fitted on the support photos, scikit-learn's L-BFGS).
"""
from __future__ import annotations

import numpy as np

__all__ = ["simpleshot_accuracy", "knn_accuracy", "linear_probe_accuracy", "few_shot", "split_fold", "METHODS"]


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


def _fold(feats, classes, shots, fold):
    """CL2N support and queries of one fold: (support x, support y, query x, query y) or None."""
    feats = np.asarray(feats, dtype=np.float64)
    classes = np.asarray(classes)
    sup, qry = split_fold(classes, shots, fold)
    if len(qry) == 0:
        return None
    mean = feats[sup].mean(axis=0)
    return _cl2n(feats[sup], mean), classes[sup], _cl2n(feats[qry], mean), classes[qry]


def knn_accuracy(feats: np.ndarray, classes: np.ndarray, shots: int, fold: int, neighbors: int = 1) -> float:
    split = _fold(feats, classes, shots, fold)
    if split is None:
        return float("nan")
    s, sy, q, qy = split
    n = min(neighbors, len(s))
    order = np.argsort(((q[:, None, :] - s[None, :, :]) ** 2).sum(-1), axis=1, kind="stable")[:, :n]
    pred = []
    for row in sy[order]:
        names, counts = np.unique(row, return_counts=True)
        best = set(names[counts == counts.max()])
        pred.append(next(c for c in row if c in best))  # the nearest among the most voted
    return float((np.array(pred) == qy).mean())


def linear_probe_accuracy(feats: np.ndarray, classes: np.ndarray, shots: int, fold: int, c: float = 1.0) -> float:
    from sklearn.linear_model import LogisticRegression

    split = _fold(feats, classes, shots, fold)
    if split is None:
        return float("nan")
    s, sy, q, qy = split
    if len(set(sy)) < 2:
        return float((qy == sy[0]).mean())
    probe = LogisticRegression(C=c, max_iter=1000).fit(s, sy)
    return float((probe.predict(q) == qy).mean())


METHODS = {"simpleshot": simpleshot_accuracy, "knn": knn_accuracy, "linear": linear_probe_accuracy}


def few_shot(feats: np.ndarray, classes: np.ndarray, shots: tuple[int, ...] = (1, 5), folds: int = 5,
             method: str = "simpleshot") -> dict:
    """{shots: {"mean", "std", "folds": [...]}} over `folds` folds.

    A set where no class has more than k photos has no queries: mean and std are NaN."""
    if method not in METHODS:
        raise ValueError(f"unknown few-shot method {method!r}; expected one of {', '.join(METHODS)}")
    out = {}
    for k in shots:
        accs = [METHODS[method](feats, classes, k, f) for f in range(folds)]
        done = [a for a in accs if a == a]
        out[k] = {"mean": float(np.mean(done)) if done else float("nan"),
                  "std": float(np.std(done)) if done else float("nan"), "folds": accs}
    return out

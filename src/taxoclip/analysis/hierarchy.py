"""Does the embedding space follow the taxonomic hierarchy?

- `hierarchy`: species that share more of their lineage should have more similar centroids:
  the mean centroid cosine per deepest shared rank, and Spearman's rho between shared depth
  (0 = different kingdoms … 6 = same genus) and cosine over all pairs of species.
- `cluster_agreement`: cluster the photos (k-means, as many clusters as there are taxa at a
  rank) and compare the clusters with the taxa by adjusted mutual information: 0 = no better
  than chance, 1 = the clusters are the taxa. Per rank, over the photos labelled that deep.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import InputError
from .species import RANKS, centroids, lineage_keys, unit

__all__ = ["hierarchy", "cluster_agreement"]

SHARED = ["different kingdom", "same kingdom", "same phylum", "same class", "same order", "same family",
          "same genus"]


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
    rows = [{"shared": SHARED[d], "pairs": int((depth == d).sum()),
             "mean_cosine": float(cos[depth == d].mean()) if (depth == d).any() else np.nan} for d in range(7)]
    rho = float(spearmanr(depth, cos).statistic) if len(set(depth)) > 1 else float("nan")
    return pd.DataFrame(rows), rho


def cluster_agreement(emb: np.ndarray, labels: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per rank with two taxa or more: photos, taxa, and the AMI of k-means clusters vs the taxa."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_mutual_info_score

    e = unit(np.asarray(emb, dtype=np.float64))
    rows = []
    for depth, rank in enumerate(RANKS, start=1):
        key = lineage_keys(labels, depth).to_numpy()
        ok = key != ""
        taxa = len(set(key[ok]))
        if taxa < 2 or ok.sum() <= taxa:
            continue
        clusters = KMeans(n_clusters=taxa, n_init=4, random_state=seed).fit_predict(e[ok])
        rows.append({"rank": rank, "photos": int(ok.sum()), "taxa": taxa,
                     "ami": float(adjusted_mutual_info_score(key[ok], clusters))})
    if not rows:
        raise InputError("no rank has two taxa or more to cluster")
    return pd.DataFrame(rows)

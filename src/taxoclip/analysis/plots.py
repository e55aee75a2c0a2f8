"""Pictures of an embedding space, as PNG: a 2-D map of the photos (t-SNE) coloured by a rank or
a trait, and the trait-ordering scatter. matplotlib is optional (`pip install 'taxoclip[plots]'`);
without it these raise one clear line and the numeric analyses still run."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError

__all__ = ["embedding_map", "ordering_scatter"]

COLOURS = 10  # the most frequent values get a colour each; the rest are grey "other"


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise InputError("plots need matplotlib: pip install 'taxoclip[plots]' (the numbers need nothing more)") \
            from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def embedding_map(emb: np.ndarray, colour: pd.Series, path: str | os.PathLike, title: str = "",
                  max_points: int = 3000, seed: int = 0) -> Path:
    """t-SNE of (at most `max_points`, drawn at random) photos, each coloured by its `colour` value."""
    from sklearn.manifold import TSNE

    plt = _pyplot()
    values = colour.astype(str).to_numpy()
    keep = np.flatnonzero(~np.isin(values, ["", "nan", "None"]))
    if len(keep) < 5:
        raise InputError(f"a map needs at least 5 photos with a {colour.name} value, have {len(keep)}")
    keep = np.sort(np.random.default_rng(seed).choice(keep, min(max_points, len(keep)), replace=False))
    xy = TSNE(2, init="pca", perplexity=min(30.0, (len(keep) - 1) / 3), random_state=seed).fit_transform(
        np.asarray(emb, dtype=np.float64)[keep])
    v = values[keep]
    top = pd.Series(v).value_counts().index[:COLOURS].tolist()
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=80)
    other = ~np.isin(v, top)
    if other.any():
        ax.scatter(*xy[other].T, s=4, c="lightgrey", label=f"other ({len(set(v[other]))})", linewidths=0)
    cmap = plt.get_cmap("tab10")
    for n, name in enumerate(top):
        ax.scatter(*xy[v == name].T, s=4, color=cmap(n), label=name[:28], linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, markerscale=3, loc="center left", bbox_to_anchor=(1, 0.5), frameon=False,
              title=str(colour.name), title_fontsize=7)
    return _save(fig, path)


def ordering_scatter(table: pd.DataFrame, summary: dict, path: str | os.PathLike, trait: str,
                     title: str = "") -> Path:
    """Each species' held-out position on the trait direction against its true value."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4), dpi=80)
    ax.scatter(table["value"], table["position"], s=8, alpha=0.7, linewidths=0)
    ax.set_xlabel(f"{trait} (species mean)", fontsize=8)
    ax.set_ylabel("position on the fitted direction (held out)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(f"{title}\nSpearman rho {summary['rho']:.2f}, permutation p {summary['p_value']:.3g}, "
                 f"{summary['species']} species", fontsize=8)
    return _save(fig, path)


def _save(fig, path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path

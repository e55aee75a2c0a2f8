"""Nearest photos: an index of image embeddings, searched by photo, with a novelty flag.

"Have we seen this before?" is a question museum and monitoring teams ask of every new
photo. The index holds the L2-normalised embeddings of a photo collection (faiss, exact
inner product); a query gets its `k` most similar photos with cosine similarities. It is
`novel` when even its nearest photo is less similar than the index's own photos are to
their nearest neighbours at the `novelty_quantile` (default 5 %): the threshold is learnt
from the collection (leave-one-out), not a fixed number.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..durable import write_atomic
from ..errors import InputError

__all__ = ["PhotoIndex"]

VECTORS, NAMES, META = "vectors.npy", "photos.parquet", "index.json"
FEW_QUERIES = 16


@dataclass
class PhotoIndex:
    vectors: np.ndarray  # [N, D] float32, unit rows
    names: list[str]
    model: str
    threshold: float  # novelty: a query whose best similarity is below this is novel
    quantile: float
    labels: list[str] | None = None  # each photo's class, when the collection was labelled
    _faiss: object = field(default=None, repr=False, compare=False)

    @classmethod
    def build(cls, names: Sequence[str], vectors: np.ndarray, model: str, quantile: float = 0.05,
              labels: Sequence[str] | None = None) -> "PhotoIndex":
        v = _unit(vectors)
        if len(v) < 2:
            raise InputError("an index needs at least two readable photos")
        index = cls(v, list(names), model, float("nan"), quantile, None if labels is None else list(labels))
        sims, _ = index._search(v, 2)  # the first hit is the photo itself
        index.threshold = float(np.quantile(sims[:, 1], quantile))
        return index

    def search(self, vectors: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(similarities [Q, k'], positions [Q, k'], novel [Q])."""
        sims, pos = self._search(_unit(vectors), min(k, len(self.vectors)))
        return sims, pos, sims[:, 0] < self.threshold

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        if self._faiss is None:  # built once: adding 42K vectors costs more than a query
            self._faiss = faiss.IndexFlatIP(self.vectors.shape[1])
            self._faiss.add(self.vectors)
        if len(queries) >= FEW_QUERIES:
            return self._faiss.search(queries, k)
        # A few queries on one thread: faiss's OpenMP team costs more than the scan (42K photos, one
        # query on 2 shared cores: 2.8 ms on one thread, 24-475 ms on two, worst after torch has run).
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return self._faiss.search(queries, k)
        finally:
            faiss.omp_set_num_threads(threads)

    def save(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / VECTORS, self.vectors)
        photos = {"file_name": self.names} | ({} if self.labels is None else {"label": self.labels})
        pd.DataFrame(photos).to_parquet(folder / NAMES, index=False)
        write_atomic(folder / META, json.dumps({"model": self.model, "photos": len(self.names), "dim":
                                                int(self.vectors.shape[1]), "novelty_threshold": self.threshold,
                                                "novelty_quantile": self.quantile}, indent=2).encode())
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "PhotoIndex":
        folder = Path(folder)
        try:
            meta = json.loads((folder / META).read_text())
            vectors = np.load(folder / VECTORS, allow_pickle=False)
            photos = pd.read_parquet(folder / NAMES)
            names = photos["file_name"].tolist()
        except (OSError, ValueError, KeyError) as e:
            raise InputError(f"{folder}: not a photo index (build one with `taxoclip index build`): {e}") from None
        labels = photos["label"].astype(str).tolist() if "label" in photos.columns else None
        return cls(vectors, names, meta["model"], float(meta["novelty_threshold"]), float(meta["novelty_quantile"]),
                   labels)


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.ascontiguousarray(v, dtype=np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

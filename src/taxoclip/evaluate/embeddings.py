"""Image embeddings of an evaluation set, computed once per (model, set, preprocessing) and
cached, so every later evaluation or analysis of that pair reads them; and the random-init
floor model."""
from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
import torch

from ..cache import cache_entry, hash_key
from ..models import ClipModel, load_model, resolve
from ..models.loading import file_fingerprint, instantiate
from .datasets import EvalDataset

__all__ = ["image_embeddings", "random_init_model"]


def image_embeddings(model: ClipModel, dataset: EvalDataset, *, progress: bool | None = None,
                     batch_size: int | None = None) -> np.ndarray:
    """[N, D] float32, L2-normalised, in the dataset's order; read from the cache when there."""
    from ..classify import ImageEmbedder

    key = hash_key("eval-embeddings", model.fingerprint, model.id, model.preprocess.as_dict(), str(model.dtype),
                   [file_fingerprint(s) for s in dataset.sources], _identities(dataset.refs))
    with cache_entry("embeddings", key) as (final, tmp):
        if tmp is not None:
            vecs, errors = [], []
            for name, vec, err in ImageEmbedder(model, batch_size=batch_size).embed_iter(
                    dataset.refs, normalize=True, progress=progress):
                if err:
                    errors.append(f"{name}: {err}")
                vecs.append(vec if vec is not None else np.full(model.embed_dim, np.nan, dtype=np.float32))
            if errors:
                from ..errors import InputError

                raise InputError(f"dataset {dataset.name}: {len(errors)} unreadable images ({'; '.join(errors[:3])})")
            np.save(tmp / "embeddings.npy", np.stack(vecs).astype(np.float32))
    return np.load(final / "embeddings.npy")


def _identities(refs) -> list:
    """Each photo's identity for the cache key: its file's real path (and offset in a shard), so
    `../data/x` and `/abs/data/x` share one entry; in-memory images by name."""
    real = functools.lru_cache(maxsize=None)(os.path.realpath)
    return [[real(r.path), r.offset] if r.path else r.name for r in refs]


def random_init_model(model_id: str, seed: int = 0, **kwargs) -> ClipModel:
    """The architecture of `model_id` with freshly initialised weights: the floor every trained
    model must beat. Its id is `<model_id>:random-init-<seed>` (its own cache keys)."""
    trained = load_model(model_id, precision="fp32", **kwargs)
    torch.manual_seed(seed)
    net = instantiate(trained.source.model_cfg, device="cpu").eval().requires_grad_(False)
    source = dataclasses.replace(resolve(model_id), id=f"{model_id}:random-init-{seed}", weights=None)
    fake = _RandomSource(source, seed)
    return ClipModel(fake, net, device=trained.device, dtype=torch.float32,
                     scalars={"logit_scale": net.logit_scale.detach().float()}, text_loaded=True)


class _RandomSource:
    """A model source without weights on disk, fingerprinted by its architecture and seed."""

    def __init__(self, source, seed: int):
        self._source, self._seed = source, seed

    def __getattr__(self, name):
        return getattr(self._source, name)

    @property
    def fingerprint(self) -> str:
        return hash_key("random-init", self._source.model_cfg, self._seed)

"""Zero-shot validation during training: top-1 at every taxonomic rank on a held-out split.

Each class (a taxon) is described by captions of the configured text types, optionally
through prompt templates, embedded with the model being trained and averaged; each image
is assigned the class with the highest cosine similarity, and counts as correct at a rank
when the predicted taxon's lineage down to that rank equals the true one. Processes score
disjoint shares of the split; counts are summed across processes.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..io.preprocess import ImagePreprocess
from ..taxonomy import RANKS, Rank, Taxon, apply_templates, render_caption
from .config import EvalConfig
from .data import image_member, in_split, decode_image, find_shards, read_samples, sample_taxon

__all__ = ["Evaluator", "class_texts", "load_taxa"]

log = logging.getLogger(__name__)


def class_texts(taxon: Taxon, texts: Sequence[str], templates: str) -> list[str]:
    out = []
    for kind in texts:
        if kind == "vocabulary":
            out.extend(apply_templates(taxon.vocabulary_text, templates))
        else:
            cap = render_caption(taxon, kind)
            out.extend([cap] if templates == "none" else apply_templates(cap.removeprefix("a photo of ").rstrip("."),
                                                                          templates))
    return out


def load_taxa(spec: str, train_shards: Sequence[str], train_split: str, seen: list[Taxon]) -> list[Taxon]:
    """The candidate classes: a taxa table, the training data's taxa ("train"), or those seen
    (alone with "" or "none")."""
    taxa: dict[Taxon, None] = {}
    if spec == "none":
        pass
    elif spec == "train":
        shards = find_shards(train_shards, train_split)
        for url in shards.urls:
            keys = shards.keys_for(url)
            for s in read_samples(url, lambda m: m == "json"):
                if "json" in s and in_split(s, train_split) and (keys is None or os.path.basename(s["__key__"]) in keys):
                    taxa[sample_taxon(s)] = None
    elif spec:
        import pandas as pd

        p = Path(spec)
        try:
            df = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p, dtype=str, keep_default_na=False)
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read eval taxa {p}: {e}") from None
        for rec in df.to_dict("records"):
            t = Taxon.from_record(rec)
            if not t.empty:
                taxa[t] = None
    for t in seen:
        taxa[t] = None
    return list(taxa)


class Evaluator:
    """Holds this process's share of the validation images (decoded once) and scores a model."""

    def __init__(self, cfg: EvalConfig, preprocess: ImagePreprocess, tokenizer, *, rank: int = 0, world: int = 1,
                 train_shards: Sequence[str] = (), train_split: str = "train"):
        self.cfg, self.tokenizer, self.rank, self.world = cfg, tokenizer, rank, world
        images, labels, seen = [], [], {}
        n = 0
        shards = find_shards(cfg.data, cfg.split)
        for url in shards.urls:
            keys = shards.keys_for(url)
            for s in read_samples(url):
                if not image_member(s) or "json" not in s or not in_split(s, cfg.split):
                    continue
                if keys is not None and os.path.basename(s["__key__"]) not in keys:
                    continue
                if cfg.max_samples and n >= cfg.max_samples:
                    break
                taxon = sample_taxon(s)
                seen.setdefault(taxon, None)
                if n % world == rank:
                    images.append(preprocess(decode_image(s[image_member(s)], preprocess.size)))
                    labels.append(taxon)
                n += 1
        if n == 0:
            raise InputError(f"no evaluation samples of split {cfg.split!r} in {', '.join(cfg.data)}")
        self.total = n
        self.taxa = load_taxa(cfg.taxa, train_shards, train_split, list(seen))
        index = {t: i for i, t in enumerate(self.taxa)}
        self.images = torch.stack(images) if images else torch.empty(0, 3, preprocess.size, preprocess.size)
        self.labels = torch.tensor([index[t] for t in labels], dtype=torch.long)
        # lineage codes per rank: class i's ancestor at rank r, as an integer id
        codes = []
        for r in Rank:
            ids: dict[Taxon, int] = {}
            codes.append([ids.setdefault(t.truncate(r), len(ids)) for t in self.taxa])
        self.codes = torch.tensor(codes, dtype=torch.long)  # [7, C]
        self.texts = [class_texts(t, cfg.texts, cfg.templates) for t in self.taxa]
        log.info("zero-shot eval: %d images (%d here), %d classes, chance %.2f%%", n, len(labels), len(self.taxa),
                 100 / len(self.taxa))

    @torch.no_grad()
    def class_embeddings(self, net, device, dtype) -> torch.Tensor:
        flat = [t for texts in self.texts for t in texts]
        sizes = [len(t) for t in self.texts]
        out = []
        for i in range(0, len(flat), self.cfg.batch_size):
            tokens = self.tokenizer(flat[i:i + self.cfg.batch_size]).to(device)
            out.append(F.normalize(net.encode_text(tokens).float(), dim=-1))
        emb = torch.cat(out).split(sizes)
        return F.normalize(torch.stack([e.mean(0) for e in emb]), dim=-1)

    @torch.no_grad()
    def __call__(self, net, device, dtype: torch.dtype = torch.float32, autocast=None) -> dict[str, float]:
        import contextlib

        was_training = net.training
        net.eval()
        ctx = autocast or contextlib.nullcontext
        with ctx():
            classes = self.class_embeddings(net, device, dtype)
            correct = torch.zeros(len(RANKS) + 1, dtype=torch.float64)
            for i in range(0, len(self.images), self.cfg.batch_size):
                x = self.images[i:i + self.cfg.batch_size].to(device=device, dtype=dtype)
                feats = F.normalize(net.encode_image(x).float(), dim=-1)
                scores = feats @ classes.T
                y = self.labels[i:i + self.cfg.batch_size].to(device)
                pred = scores.argmax(1)
                codes = self.codes.to(device)
                correct[:len(RANKS)] += (codes[:, pred] == codes[:, y]).sum(1).double().cpu()
                top5 = scores.topk(min(5, scores.shape[1]), dim=1).indices
                correct[len(RANKS)] += (top5 == y[:, None]).any(1).sum().double().cpu()
        net.train(was_training)
        if self.world > 1:
            import torch.distributed as dist

            t = correct.to(device)
            dist.all_reduce(t)
            correct = t.cpu()
        acc = (correct / self.total).tolist()
        out = {f"top1_{r}": a for r, a in zip(RANKS, acc[:len(RANKS)])}
        out["top5_species"] = acc[len(RANKS)]
        out["chance"] = 1 / len(self.taxa)
        out["classes"] = float(len(self.taxa))
        return out

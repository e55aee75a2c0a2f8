"""`IdentificationService`: the task objects the server runs, shared by every request.

It holds one Tree-of-Life classifier (model + vocabulary), the label banks clients asked for
and the subsets of the vocabulary (both kept in small LRU maps: embedding a label set or
masking 300K rows is paid once), the name index, and the batcher. Scoring goes through the
classifiers' own `scorer`s: the server computes nothing the CLI does not. Whatever runs torch
(loading, label sets, batches) runs in the batcher's thread (`Batcher.call`).
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from typing import Hashable, Sequence

import torch

from ..classify import CustomLabelsClassifier, TreeOfLifeClassifier
from ..errors import InputError
from ..models.runtime import int8_scan_pays
from ..taxonomy import Rank
from .batching import Batcher, Job

__all__ = ["IdentificationService", "ScoreKey"]

log = logging.getLogger(__name__)

# How a job is scored: ("taxa", rank, k, subset rank, subset values) | ("labels", labels, k) | ("embed",)
ScoreKey = tuple


class _LRU(OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_or(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = make()
        self[key] = value
        while len(self) > self.size:
            self.popitem(last=False)
        return value


class IdentificationService:
    def __init__(self, model: str | None = None, *, device: str = "auto", precision: str = "auto",
                 max_batch: int = 64, max_wait_s: float = 0.025, max_queue: int = 512):
        self._labels = _LRU(16)  # used in the batch thread only
        self._subsets = _LRU(32)
        self._names = None
        self._lock = threading.Lock()  # the name index (built on first use)
        self._subset_lock = threading.Lock()
        self.batches: deque[tuple[int, float]] = deque()  # (photos, seconds) per batch, for /metrics (the app drains it)
        self.batcher = Batcher(self._run, max_batch=max_batch, max_wait_s=max_wait_s, max_queue=max_queue,
                               on_batch=lambda n, _jobs, s: self.batches.append((n, s))).start()
        try:  # all torch work in the batch thread (see `batching`)
            self.classifier = self.batcher.call(lambda: _load(model, device, precision))
        except BaseException:
            self.batcher.stop()
            raise
        self.model = self.classifier.model

    # ----- what requests ask for --------------------------------------------------------------
    def taxa_key(self, rank: str | None, k: int, subset_rank: str | None, subset: Sequence[str]) -> ScoreKey:
        """Validate a Tree-of-Life request now (unknown rank or taxon: InputError), not in the batch."""
        r = Rank.parse(rank or "species")
        values = tuple(sorted({v.strip() for v in subset if v.strip()}))
        sr = Rank.parse(subset_rank).label if values else None
        if values:
            self._subset_bank(sr, values)
        return ("taxa", r.label, int(k), sr, values)

    def labels_key(self, labels: Sequence[str], k: int | None) -> ScoreKey:
        names = tuple(dict.fromkeys(x.strip() for x in labels if x.strip()))
        if not names:
            raise InputError("labels: give at least one label")
        if len(names) > 1000:
            raise InputError(f"labels: {len(names)} labels, at most 1000")
        self.batcher.call(lambda: self._label_classifier(names))  # embed the labels now (cached), before the batch
        return ("labels", names, int(k) if k else None)

    def search(self, query: str, limit: int = 20) -> list[dict]:
        with self._lock:
            if self._names is None:
                from ..names import NameIndex

                self._names = NameIndex(self.classifier.full_bank.table)
        return self._names.search(query, limit)

    # ----- the batch --------------------------------------------------------------------------
    def _run(self, jobs: list[Job]) -> list:
        feats = self.model.encode_image(torch.stack([p for j in jobs for p in j.pixels]))
        bounds, start = [], 0
        for j in jobs:
            bounds.append((start, start + len(j.pixels)))
            start += len(j.pixels)
        groups: dict[Hashable, list[int]] = {}
        for n, j in enumerate(jobs):
            groups.setdefault(j.key, []).append(n)
        results: list = [None] * len(jobs)
        for key, members in groups.items():
            rows = torch.cat([torch.arange(*bounds[n]) for n in members])
            out = self._score(key, feats[rows])
            at = 0
            for n in members:
                size = bounds[n][1] - bounds[n][0]
                results[n] = out[at:at + size]
                at += size
        return results

    def _score(self, key: ScoreKey, feats: torch.Tensor) -> list:
        kind = key[0]
        if kind == "embed":
            return list(feats.numpy())
        if kind == "labels":
            _, names, k = key
            return self._label_classifier(names).scorer(k)(feats)
        _, rank, k, subset_rank, values = key
        bank = self._subset_bank(subset_rank, values) if values else None
        return self.classifier.scorer(rank, k, bank=bank)(feats)

    def _subset_bank(self, rank: str, values: tuple[str, ...]):
        with self._subset_lock:
            return self._subsets.get_or((rank, values), lambda: self.classifier.full_bank.where(rank, values))

    def _label_classifier(self, names: tuple[str, ...]) -> CustomLabelsClassifier:
        return self._labels.get_or(names, lambda: CustomLabelsClassifier(list(names), model=self.model, workers=0))


def _load(model: str | None, device: str, precision: str) -> TreeOfLifeClassifier:
    classifier = TreeOfLifeClassifier(model, device=device, precision=precision, workers=0)
    if int8_scan_pays():  # small batches: where the int8 product is faster (see there)
        classifier.full_bank.pack_int8()
    return classifier

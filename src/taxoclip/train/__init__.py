"""Training: BioCLIP 2's hierarchical contrastive recipe, from one CPU to many GPU nodes.

    >>> from taxoclip.train import load_config, train
    >>> cfg = load_config("configs/butterflies-tiny.yaml", ["steps=100", "out=runs/try"])
    >>> result = train(cfg)                 # one process; under torchrun, every process calls it
    >>> result.export                       # runs/try/export: open_clip layout, loads in `taxoclip predict`

Modules: `config` (recipes and overrides), `data` (deterministic webdataset streams), `model`
(building models, the replay head), `loss`, `optim`, `checkpoint`, `loop` (the step and the
run), `evaluate` (zero-shot accuracy per taxonomic rank), `export`.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "TrainConfig": "taxoclip.train.config",
    "load_config": "taxoclip.train.config",
    "apply_overrides": "taxoclip.train.config",
    "train": "taxoclip.train.loop",
    "TrainResult": "taxoclip.train.loop",
    "build_model": "taxoclip.train.model",
    "export_checkpoint": "taxoclip.train.export",
    "export_model": "taxoclip.train.export",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'taxoclip.train' has no attribute {name!r}")

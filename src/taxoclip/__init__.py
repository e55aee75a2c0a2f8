"""taxoclip: identify species across the tree of life from photos (BioCLIP 2 and friends).

    >>> from taxoclip import TreeOfLifeClassifier, Rank
    >>> clf = TreeOfLifeClassifier()                       # bundled taxoclip-mini + tol-mini (offline)
    >>> clf = TreeOfLifeClassifier("bioclip-2")            # BioCLIP 2 + TreeOfLife-200M vocabulary
    >>> clf.predict(["fox.jpg"], rank=Rank.SPECIES, k=5)   # list of dicts, pybioclip's keys

Heavy modules load on first use so `taxoclip --help` stays instant.
"""
from __future__ import annotations

import importlib

from .taxonomy import Rank, Taxon

__version__ = "0.1.0"

_LAZY = {
    "TreeOfLifeClassifier": "taxoclip.classify",
    "CustomLabelsClassifier": "taxoclip.classify",
    "CustomLabelsBinningClassifier": "taxoclip.classify",
    "Prediction": "taxoclip.classify",
    "TextBank": "taxoclip.textbank",
    "load_model": "taxoclip.models",
    "list_models": "taxoclip.models",
    "ClipModel": "taxoclip.models",
    "embed_images": "taxoclip.classify",
}

__all__ = ["Rank", "Taxon", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'taxoclip' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)

"""Building Tree-of-Life training data: sources -> aligned, deduplicated, leakage-free shards.

    >>> from taxoclip.data import build, BuildConfig
    >>> build(["bio-mini/apple/", "my_photos.csv"], "out/", exclude=["eval/"])

Modules: `sources` (registry of input kinds: `shards`, `tables`, `dwca_source`), `align`
(taxonomy alignment and backbones), `imaging`, `hashing`, `leakage`, `exclusion`, `splits`,
`shardwriter`, `workstate`, `catalog`, `build` (the pipeline), `stats`, `verify`.
Imports are lazy so that `import taxoclip.data` stays cheap.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "Record": "records",
    "build": "build", "BuildConfig": "build", "BuildOptions": "build", "sample_uuid": "build",
    "ImageSpec": "imaging", "AlignedMatch": "leakage", "SplitRule": "splits", "SourceOptions": "sources",
    "Aligner": "align", "Backbone": "align", "TableBackbone": "align", "load_backbone": "align",
    "read_inputs": "sources", "read_source": "sources", "detect_source": "sources", "register_source": "sources",
    "verify": "verify", "dataset_stats": "stats", "load_stats": "stats", "read_catalog": "catalog",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'taxoclip.data' has no attribute {name!r}")

"""How a result was reached: model, vocabulary, options, sources, command and time.

Stored in a scores file's metadata and written as JSON beside every output of `predict`
and `decide`, so a table found on a shared drive a year later still says what made it.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..durable import write_atomic

__all__ = ["model_identity", "vocabulary_identity", "run_record", "write_beside"]


def model_identity(model) -> dict:
    """Model id and a hash of its weights (cheap: HF blob names and file stats, see `file_fingerprint`)."""
    return {"id": model.id, "weights_hash": model.source.fingerprint, "logit_scale": model.logit_scale}


def vocabulary_identity(bank) -> dict:
    """Name, size and a hash that tells two vocabularies (or two subsets of one) apart."""
    h = hashlib.sha1()
    if bank.cache_dir is not None:
        h.update(bank.cache_dir.name.encode())
    else:
        h.update(bank.table.to_csv(index=False).encode())
    if bank._index is not None:
        h.update(np.ascontiguousarray(bank._index).tobytes())
    return {"name": _vocabulary_name(bank.name), "taxa": len(bank), "hash": h.hexdigest()[:16]}


def _vocabulary_name(name: str) -> str:
    """A vocabulary's name without this machine's paths: a model folder's vocabulary is named by
    the folder's manifest (tol-mini for the bundled model), else by the folder's name."""
    base, _, subset = name.partition("[")
    path = Path(base)
    if not path.is_absolute() or not path.exists():
        return name
    manifest = path.parent / "MANIFEST.json"
    try:
        named = json.loads(manifest.read_text())["vocabulary"]["name"] if manifest.is_file() else None
    except (OSError, ValueError, KeyError, TypeError):
        named = None
    return (named or f"{path.parent.name}/{path.name}") + (f"[{subset}" if subset else "")


def run_record(**parts) -> dict:
    """The common fields (version, command line, time) plus whatever the run adds."""
    from .. import __version__

    return {"taxoclip": __version__, "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **parts}


def write_beside(output: str | os.PathLike | None, record: dict) -> Path | None:
    """`out.csv` -> `out.csv.provenance.json` (nothing for standard output)."""
    if output in (None, "-", "stdout"):
        return None
    path = Path(f"{output}.provenance.json")
    write_atomic(path, json.dumps(record, indent=2, default=str).encode())
    return path

"""Decisions on classification scores: the deepest confident rank, calibration, a location
prior, events and provenance, re-runnable from stored scores without the model.

    from taxoclip.decide import Policy, Thresholds, decide
    decisions = decide("scores.parquet", Policy(Thresholds.parse("species=0.9,genus=0.7")))
"""
from __future__ import annotations

import os
from typing import Sequence

import pandas as pd

from .events import DEFAULT_GAP_S
from .pipeline import DEFAULT_CANDIDATES, DEFAULT_GROUPS, decide_tables, predict_decisions, top_rows
from .rule import DECISION_COLUMNS, DEFAULT_THRESHOLDS, Policy, Thresholds, decide_table
from .scores import ScoresFile, ScoresWriter, read_scores

__all__ = ["Policy", "Thresholds", "DEFAULT_THRESHOLDS", "DECISION_COLUMNS", "decide", "decide_table",
           "decide_tables", "predict_decisions", "top_rows", "ScoresFile", "ScoresWriter", "read_scores",
           "DEFAULT_CANDIDATES", "DEFAULT_GROUPS", "DEFAULT_GAP_S"]


def decide(scores: str | os.PathLike | Sequence[str | os.PathLike], policy: Policy | None = None, *,
           events: bool = False, gap: float = DEFAULT_GAP_S) -> pd.DataFrame:
    """Decisions for every photo of one or more scores files (see `decide_tables`)."""
    paths = [scores] if isinstance(scores, (str, os.PathLike)) else list(scores)
    files = read_scores(paths)
    tables = (t for f in files for t in f.batches())
    parts = [d for _, d in decide_tables(tables, policy, events=events, gap=gap)]
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["file_name", *DECISION_COLUMNS])
    if events and parts:
        out.attrs["events"] = parts[0].attrs["events"]
    return out

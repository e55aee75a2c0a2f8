"""Decisions over photos (run the model, store the scores, decide) and over stored scores.

`predict` and `decide` both end in `decide_tables`, so a decision re-run from a scores file
is the decision the photos got when they were first predicted.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from ..taxonomy import Rank
from .context import photo_context
from .events import DEFAULT_GAP_S, assign_events, fuse
from .rule import DECISION_COLUMNS, Policy, decide_labels, decide_table
from .scores import SEP, ScoresWriter, score_batch

__all__ = ["decide_tables", "predict_decisions", "top_rows", "DEFAULT_CANDIDATES", "DEFAULT_GROUPS"]

DEFAULT_CANDIDATES = 20  # species stored per photo
DEFAULT_GROUPS = 5  # groups stored per photo at each higher rank


def decide_tables(tables: Iterable[pa.Table], policy: Policy | None = None, *, events: bool = False,
                  gap: float = DEFAULT_GAP_S, labels: bool = False) -> Iterator[tuple[pa.Table, pd.DataFrame]]:
    """(scores, decisions) per table; with `events`, once for all of them, each photo answered by
    its event (`event` column; source `event` where that differs from the photo's own answer).
    `labels`: the tables hold custom labels (`scores.label_batch`), decided by `decide_labels`.

    The events' own rows are `decisions.attrs["events"]`."""
    policy = policy or Policy()
    rule = decide_labels if labels else decide_table
    if not events:
        for t in tables:
            yield t, rule(t, policy)
        return
    t = pa.concat_tables(list(tables))
    own = rule(t, policy)
    ids = assign_events(t, gap)
    fused = fuse(t, ids)
    per_event = rule(fused, policy).rename(columns={"file_name": "event"})
    per_event.insert(1, "photos", pd.Series(ids[ids != ""]).value_counts().reindex(per_event["event"]).to_numpy())
    joined = pd.DataFrame({"event": ids}).merge(per_event.drop(columns=["error", "photos"]), on="event", how="left")
    out = own.copy()
    ok = ids != ""
    cols = ["prediction", "prediction_rank", "prediction_score"]
    changed = ok & ((joined["prediction"].to_numpy() != own["prediction"].to_numpy())
                    | (joined["prediction_rank"].to_numpy() != own["prediction_rank"].to_numpy()))
    for c in cols:
        out.loc[ok, c] = joined.loc[ok, c].to_numpy()
    out.loc[ok, "prediction_source"] = np.where(changed[ok], "event", joined.loc[ok, "prediction_source"])
    notes = joined["note"].fillna("").to_numpy()
    out.loc[ok, "note"] = [a if a else b for a, b in zip(out.loc[ok, "note"], notes[ok])]
    out.insert(1, "event", ids)
    out.attrs["events"] = per_event
    yield t, out


def top_rows(table: pa.Table, rank: Rank | str, k: int) -> list[list[dict]]:
    """pybioclip's top-k rows per photo, read from its stored candidates."""
    from ..classify import SCORE
    from ..textbank import RANK_COLUMNS

    r = Rank.parse(rank)
    level = r.label if r is not Rank.SPECIES else "species"
    keys, probs = table.column(level).to_pylist(), table.column(f"{level}_p").to_pylist()
    commons = table.column("common_name").to_pylist()
    out = []
    for i, (ks, ps) in enumerate(zip(keys, probs)):
        rows = []
        for j, (key, p) in enumerate(zip((ks or [])[:k], (ps or [])[:k])):
            parts = key.split(SEP)
            if r is Rank.SPECIES:
                row = dict(zip(RANK_COLUMNS, parts))
                row["species"] = f"{row['genus']} {row['species_epithet']}" if row["species_epithet"] else ""
                row["common_name"] = commons[i][j]
            else:
                row = dict(zip(RANK_COLUMNS[: r + 1], parts))
            row[SCORE] = p
            rows.append(row)
        out.append(rows)
    return out


def predict_decisions(clf, images, policy: Policy | None = None, *, rank: Rank | str = Rank.SPECIES, k: int = 5,
                      candidates: int = DEFAULT_CANDIDATES, groups: int = DEFAULT_GROUPS,
                      context: pd.DataFrame | None = None, scores: ScoresWriter | None = None,
                      events: bool = False, gap: float = DEFAULT_GAP_S,
                      progress: bool | None = None, events_out: list | None = None
                      ) -> Iterator[tuple[str, list[dict], dict]]:
    """(file name, top-k rows, decision row) per photo, in input order.

    `clf` is a TreeOfLifeClassifier; the scores of each batch go to `scores` when given; with
    `events`, the table of events is appended to `events_out`."""
    r = Rank.parse(rank)
    need = max(k, candidates) if r is Rank.SPECIES else candidates
    wide = max(k, groups) if r is not Rank.SPECIES else groups

    # where and when: for the prior, for events, and for later decisions from stored scores
    located = scores is not None or events or (policy is not None and policy.prior is not None)

    def tables() -> Iterator[pa.Table]:
        for names, masses, errors in clf.masses_iter(images, need, wide, progress=progress):
            t = score_batch(clf.bank, names, masses, errors,
                            photo_context(names, context) if located or context is not None else None)
            if scores is not None:
                scores.write(t)
            yield t

    for t, decisions in decide_tables(tables(), policy, events=events, gap=gap):
        if events and events_out is not None:
            events_out.append(decisions.attrs["events"])
        rows = top_rows(t, r, k)
        for i, rec in enumerate(decisions.to_dict("records")):
            yield rec["file_name"], rows[i], rec


def decision_columns(events: bool) -> list[str]:
    return (["event"] if events else []) + DECISION_COLUMNS

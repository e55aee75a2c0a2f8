"""Events: photos of one camera taken close together show the same animals; decide once for them.

Grouping: photos of the same camera (the `deployment` column, else the photo's folder) whose
times (`datetime`, from a column or EXIF DateTimeOriginal) are at most `gap` seconds from the
previous photo form one event. A photo without a time is an event of its own.

Fusion: the event's candidates carry the mean of the photos' probability masses (a linear
opinion pool). A pool of probabilities, unlike a product, is not vetoed by one blurred or
empty frame, and it needs no floor for a candidate that a photo did not store: that mass is
already in the photo's higher-rank groups. The event is then decided by the same rule as a photo.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow as pa

from .context import parse_time
from .scores import CONTEXT_COLUMNS, LEVELS, score_schema

__all__ = ["DEFAULT_GAP_S", "assign_events", "fuse"]

DEFAULT_GAP_S = 60.0


def assign_events(table: pa.Table, gap: float = DEFAULT_GAP_S) -> np.ndarray:
    """An event id per row ("" for rows with an error)."""
    names = table.column("file_name").to_pylist()
    deployment = table.column("deployment").to_pylist() if "deployment" in table.column_names else [None] * len(names)
    camera = [d if d else os.path.dirname(n) or "." for d, n in zip(deployment, names)]
    when = parse_time(table.column("datetime").to_pylist()) if "datetime" in table.column_names \
        else np.full(len(names), np.nan)
    ok = np.array([e is None for e in table.column("error").to_pylist()], dtype=bool)
    df = pd.DataFrame({"camera": camera, "t": when, "name": names, "row": np.arange(len(names))})[ok]
    df = df.sort_values(["camera", "t", "name"], na_position="last", kind="stable")
    new = (df["camera"] != df["camera"].shift()) | df["t"].isna() | (df["t"].diff() > gap) | df["t"].shift().isna()
    number = new.groupby(df["camera"]).cumsum()
    out = np.full(len(names), "", dtype=object)
    out[df["row"].to_numpy()] = (df["camera"] + "#" + number.astype(str)).to_numpy()
    return out


def fuse(table: pa.Table, events: np.ndarray) -> pa.Table:
    """One scores row per event (named by its id): the mean masses of its photos, best first."""
    ok = events != ""
    ev = pd.Series(events[ok])
    n_photos = ev.value_counts()
    order = list(dict.fromkeys(ev))
    cols: dict[str, list] = {c: [None] * len(order) for c in score_schema().names}
    cols["file_name"] = order
    position = {e: i for i, e in enumerate(order)}
    sub = table.filter(pa.array(ok))
    for level in LEVELS:
        lists = sub.column(level).to_pylist()
        probs = sub.column(f"{level}_p").to_pylist()
        width = max((len(x) for x in lists), default=0)
        long = pd.DataFrame({
            "event": np.repeat(ev.to_numpy(), [len(x) for x in lists]),
            "key": [k for x in lists for k in x], "p": [p for x in probs for p in x]})
        if level == "species":
            commons = sub.column("common_name").to_pylist()
            long["common"] = [c for x in commons for c in x]
        agg = long.groupby(["event", "key"], sort=False).agg(p=("p", "sum"), **(
            {"common": ("common", "first")} if level == "species" else {})).reset_index()
        agg["p"] = agg["p"] / agg["event"].map(n_photos).to_numpy()
        agg = agg.sort_values(["event", "p", "key"], ascending=[True, False, True], kind="stable")
        agg = agg.groupby("event", sort=False).head(width)
        for e, part in agg.groupby("event", sort=False):
            i = position[e]
            cols[level][i] = part["key"].tolist()
            cols[f"{level}_p"][i] = part["p"].astype(np.float32).tolist()
            if level == "species":
                cols["common_name"][i] = part["common"].tolist()
    first = pd.DataFrame({c: sub.column(c).to_pylist() for c in CONTEXT_COLUMNS if c in sub.column_names})
    if len(first):
        first["event"] = ev.to_numpy()
        first = first.groupby("event", sort=False).first()
        for c in first.columns:
            cols[c] = [None if pd.isna(v) else v for v in first[c].reindex(order).tolist()]
    return pa.Table.from_pydict(cols, schema=score_schema())

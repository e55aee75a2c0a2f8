"""Results in the papers' layout: one row per model (and setting), one column per dataset, and the mean."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

__all__ = ["results_table", "write_table"]


def results_table(long: pd.DataFrame, datasets: Sequence[str], index: Sequence[str], value: str) -> pd.DataFrame:
    """Pivot long rows (one per model x setting x dataset) into the wide table, in percent;
    a dataset with no value (e.g. no queries) stays as an empty cell and out of the mean."""
    table = long.pivot_table(index=list(index), columns="dataset", values=value, sort=False, dropna=False)
    table = table.reindex(columns=list(datasets))
    table["mean"] = table.mean(axis=1)
    return 100 * table


def write_table(table: pd.DataFrame, out: Path, stem: str) -> str:
    """`stem.csv` and `stem.md` in `out`; returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    table.round(2).to_csv(out / f"{stem}.csv")
    md = table.round(1).reset_index()
    lines = ["| " + " | ".join(map(str, md.columns)) + " |", "|" + "---|" * len(md.columns)]
    lines += ["| " + " | ".join("" if v != v else str(v) for v in r) + " |" for r in md.itertuples(index=False)]
    text = "\n".join(lines) + "\n"
    (out / f"{stem}.md").write_text(text)
    return text

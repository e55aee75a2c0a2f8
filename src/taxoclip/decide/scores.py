"""Scores that can be re-decided: per photo, what any later decision needs, as an Arrow table.

A photo's softmax over a vocabulary of a million taxa is too big to keep, but a decision
only looks at the leading candidates: the best `n` species and, at every higher rank, the
best `m` groups with their whole probability mass (summed over the full vocabulary, not
just the stored species). With those, thresholds, a location prior and event fusion can be
re-run without the model; `predict` itself decides from the same table, so the two agree.

Layout (one row per photo; list columns hold candidates, best first):
`file_name`, `error`, `species` (lineage keys "kingdom;…;epithet"), `species_p`, `common_name`,
`<rank>` / `<rank>_p` for genus … kingdom (lineage keys down to that rank), and the photo's
context when known (`latitude`, `longitude`, `country`, `admin1`, `site`, `deployment`,
`datetime`). The run's provenance is in the file's metadata under `taxoclip`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError
from ..taxonomy import RANKS, Rank

__all__ = ["LEVELS", "SEP", "CONTEXT_COLUMNS", "score_schema", "score_batch", "label_batch", "ScoresWriter",
           "read_scores", "ScoresFile"]

SEP = ";"
# decision order: deepest first
LEVELS = ["species", "genus", "family", "order", "class", "phylum", "kingdom"]
CONTEXT_COLUMNS: dict[str, pa.DataType] = {
    "latitude": pa.float64(), "longitude": pa.float64(), "country": pa.string(), "admin1": pa.string(),
    "site": pa.string(), "deployment": pa.string(), "datetime": pa.string(),
}
META_KEY = b"taxoclip"


def score_schema() -> pa.Schema:
    fields = [pa.field("file_name", pa.string()), pa.field("error", pa.string())]
    for level in LEVELS:
        fields.append(pa.field(level, pa.list_(pa.string())))
        fields.append(pa.field(f"{level}_p", pa.list_(pa.float32())))
        if level == "species":
            fields.append(pa.field("common_name", pa.list_(pa.string())))
    fields += [pa.field(c, t) for c, t in CONTEXT_COLUMNS.items()]
    return pa.schema(fields)


def _keys(table: pd.DataFrame, cols: Sequence[str], positions: np.ndarray) -> list[str]:
    from ..textbank import take_values  # here: textbank imports torch, and reading scores needs none

    return [SEP.join(map(str, parts)) for parts in zip(*(take_values(table[c], positions) for c in cols))]


def _sorted(keys: list[str], probs: np.ndarray) -> tuple[list[str], list[float]]:
    """Best first; equal probabilities in name order, so ties resolve the same everywhere."""
    order = np.lexsort((np.asarray(keys, dtype=object), -probs)) if len(keys) else []
    return [keys[i] for i in order], probs[order].tolist()


def score_batch(bank, names: Sequence[str], masses, errors: Mapping[int, str] | None = None,
                context: pd.DataFrame | None = None) -> pa.Table:
    """One batch of photos -> score rows. `masses` is `TextBank.masses(...)` for the readable photos
    (in order), `errors` maps a photo's position in `names` to why it could not be read."""
    errors = errors or {}
    row_p, row_i, groups = masses
    table = bank.table
    ok = [i for i in range(len(names)) if i not in errors]
    cols: dict[str, list] = {c: [None] * len(names) for c in score_schema().names}
    cols["file_name"] = list(names)
    for i, e in errors.items():
        cols["error"][i] = e
    n = row_p.shape[1] if len(ok) else 0
    if len(ok):
        flat = row_i.reshape(-1).numpy()
        species = _keys(table, [c for c in _rank_columns(Rank.SPECIES)], flat)
        commons = _keys(table, ["common_name"], flat) if "common_name" in table.columns else [""] * len(flat)
        probs = row_p.numpy()
        level_keys = {}
        for r, (gp, gi) in groups.items():
            gt = bank.groups(r)[1]
            level_keys[r] = (_keys(gt, _rank_columns(r), gi.reshape(-1).numpy()), gp.numpy(), gp.shape[1])
        for j, i in enumerate(ok):
            ks, ps = _sorted(species[j * n:(j + 1) * n], probs[j])
            common = dict(zip(species[j * n:(j + 1) * n], commons[j * n:(j + 1) * n]))
            cols["species"][i], cols["species_p"][i] = ks, ps
            cols["common_name"][i] = [common[k] for k in ks]
            for r, (keys, gp, m) in level_keys.items():
                cols[RANKS[r]][i], cols[f"{RANKS[r]}_p"][i] = _sorted(keys[j * m:(j + 1) * m], gp[j])
    if context is not None:
        for c in CONTEXT_COLUMNS:
            if c in context.columns:
                cols[c] = [None if _missing(v) else v for v in context[c].tolist()]
    return pa.Table.from_pydict(cols, schema=score_schema())


def label_batch(names: Sequence[str], labels: Sequence[Sequence[str]], probs: Sequence[Sequence[float]],
                errors: Mapping[int, str] | None = None) -> pa.Table:
    """Score rows for custom labels, which have no ranks: each photo's labels and probabilities
    (aligned with `names`; ignored where `errors` has the photo) go best first into the `species`
    column, the higher ranks stay empty. `decide_labels` decides them; events fuse them like taxa."""
    errors = errors or {}
    cols: dict[str, list] = {c: [None] * len(names) for c in score_schema().names}
    cols["file_name"] = list(names)
    for i in range(len(names)):
        if i in errors:
            cols["error"][i] = errors[i]
            continue
        ks, ps = _sorted(list(labels[i]), np.asarray(probs[i], dtype=np.float64))
        cols["species"][i], cols["species_p"][i], cols["common_name"][i] = ks, ps, [""] * len(ks)
        for level in LEVELS[1:]:
            cols[level][i], cols[f"{level}_p"][i] = [], []
    return pa.Table.from_pydict(cols, schema=score_schema())


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA or v == ""


def _rank_columns(r: Rank) -> list[str]:
    from ..textbank import RANK_COLUMNS

    return RANK_COLUMNS if r is Rank.SPECIES else RANK_COLUMNS[: r + 1]


class ScoresWriter:
    """Score rows to a Parquet file that appears only when complete (written beside, then renamed)."""

    def __init__(self, path: str | os.PathLike, provenance: dict):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        schema = score_schema().with_metadata({META_KEY: json.dumps(provenance).encode()})
        self._writer = pq.ParquetWriter(self._tmp, schema, compression="zstd")
        self._pending: list[pa.Table] = []
        self._rows = 0

    def write(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._rows += table.num_rows
        if self._rows >= 65536:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_table(pa.concat_tables(self._pending), row_group_size=65536)
            self._pending, self._rows = [], 0

    def close(self, ok: bool = True) -> None:
        try:
            self._flush()
            self._writer.close()
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        if ok:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(ok=exc_type is None)


class ScoresFile:
    """A stored scores file: its provenance and its rows, read one row group at a time."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self._file = pq.ParquetFile(self.path)
        except (OSError, pa.ArrowInvalid) as e:
            raise InputError(f"cannot read scores file {self.path}: {e}") from None
        meta = self._file.schema_arrow.metadata or {}
        if META_KEY not in meta or "species_p" not in self._file.schema_arrow.names:
            raise InputError(f"{self.path} is not a taxoclip scores file (write one with `taxoclip predict "
                             f"--scores FILE.parquet`)")
        self.provenance: dict = json.loads(meta[META_KEY])

    @property
    def vocabulary(self) -> dict:
        return self.provenance.get("vocabulary", {})

    @property
    def num_rows(self) -> int:
        return self._file.metadata.num_rows

    def batches(self) -> Iterator[pa.Table]:
        for i in range(self._file.num_row_groups):
            yield self._file.read_row_group(i)


def read_scores(paths: Sequence[str | os.PathLike]) -> list[ScoresFile]:
    """Open scores files for one decision run; they must come from the same vocabulary."""
    files = [ScoresFile(p) for p in paths]
    ref = files[0].vocabulary.get("hash")
    for f in files[1:]:
        if f.vocabulary.get("hash") != ref:
            raise InputError(f"{f.path} was scored over vocabulary {f.vocabulary.get('name')!r} "
                             f"({f.vocabulary.get('hash')}), {files[0].path} over {files[0].vocabulary.get('name')!r} "
                             f"({ref}): decide them separately")
    return files

"""The files beside the shards: `catalog.parquet` and the CSV reports.

`catalog.parquet` has one row per sample, in the order samples were written:

| column | meaning |
|---|---|
| uuid | sample key in the shards (`<uuid>.jpg`, …) |
| kingdom … genus | GBIF-style ranks, "" when unknown |
| species_epithet, species | the epithet and the binomial ("" above species rank) |
| scientific_name | the deepest name (binomial, else genus, …), as the `sci` caption uses |
| common | common name ("" when none) |
| data_source, source_id | provider and occurrence id (the split key) |
| split, shard | the split and the shard file, relative to the output folder |
| origin | where the image came from (path, URL, shard/key) |
| license | licence statement where known |
| resolution | how the taxonomy was resolved (`given`, `backbone:ncbi`, …) |
| traits | JSON object |
| width, height | size of the source image |

Reports: `errors.csv` (images that could not be built), `removed.csv` (duplicates and
evaluation leaks, with what they matched), `unresolved.csv` (records whose taxonomy could not
be resolved).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Iterator

from ..taxonomy import Taxon

__all__ = ["CATALOG_COLUMNS", "REPORTS", "catalog_schema", "write_catalog", "read_catalog", "iter_catalog",
           "write_report", "taxon_of_row"]

CATALOG_COLUMNS = ("uuid", "kingdom", "phylum", "class", "order", "family", "genus", "species_epithet", "species",
                   "scientific_name", "common", "data_source", "source_id", "split", "shard", "origin", "license",
                   "resolution", "traits", "width", "height")
REPORTS = {
    "errors.csv": ("origin", "data_source", "source_id", "reason"),
    "removed.csv": ("origin", "data_source", "source_id", "reason", "rule", "matched", "score"),
    "unresolved.csv": ("origin", "data_source", "source_id", "scientific_name", "reason"),
}


def catalog_schema():
    import pyarrow as pa

    return pa.schema([(c, pa.int32() if c in ("width", "height") else pa.string()) for c in CATALOG_COLUMNS])


def write_catalog(batches: Iterable[list[dict]], path: Path) -> int:
    """Stream row batches into a Parquet file (written to `path`'s temporary sibling first)."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = catalog_schema()
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with pq.ParquetWriter(tmp, schema) as writer:
        for rows in batches:
            if rows:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                n += len(rows)
        if n == 0:
            writer.write_table(schema.empty_table())
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return n


def read_catalog(out: Path):
    """The catalog of a built folder as a pandas DataFrame."""
    import pyarrow.parquet as pq

    return pq.read_table(Path(out) / "catalog.parquet").to_pandas()


def iter_catalog(out: Path, columns: list[str] | None = None, batch_size: int = 1024) -> Iterator[dict]:
    """The catalog's rows as dicts, streamed in batches (memory does not grow with the catalog)."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(Path(out) / "catalog.parquet") as f:
        for batch in f.iter_batches(batch_size=batch_size, columns=columns):
            yield from batch.to_pylist()


def write_report(rows: Iterable[dict], path: Path, columns: tuple[str, ...]) -> int:
    """Stream rows into a CSV report (temporary file, fsync, rename)."""
    import os

    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for row in rows:
            w.writerow(row)
            n += 1
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return n


def taxon_of_row(row) -> Taxon:
    """The taxon a catalog row (dict or pandas row) describes; its captions are the shard's."""
    return Taxon(row["kingdom"], row["phylum"], row["class"], row["order"], row["family"], row["genus"],
                 row["species_epithet"], common=row["common"])

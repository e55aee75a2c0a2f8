"""Result writers: CSV (pybioclip's columns), a terminal table, JSON lines, Parquet and JSON.

Writers take rows (dicts) as they are produced. CSV and JSON lines reach the file at once,
so a run that is killed keeps everything written so far; Parquet, JSON and table files are
assembled in a temporary file and renamed into place when the run ends. A full disk raises
`DiskFull` naming the file and what it kept: whole rows of a CSV or JSON lines file (it is cut
back to the last whole batch), or the previous version of any other file.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, Sequence

from ..durable import DiskFull, atomic_file, is_disk_full
from ..taxonomy import RANKS, Rank

__all__ = ["WRITERS", "open_writer", "format_for", "ResultWriter", "prediction_columns"]

FILE_NAME, SCORE, ERROR = "file_name", "score", "error"


def prediction_columns(rank: Rank | str | None) -> list[str]:
    """pybioclip's output columns for a rank (None: custom labels), plus `error`."""
    if rank is None:
        return [FILE_NAME, "classification", SCORE, ERROR]
    r = Rank.parse(rank)
    if r is Rank.SPECIES:
        ranks = [*RANKS[:6], "species_epithet", "species", "common_name"]
    else:
        ranks = list(RANKS[: r + 1])
    return [FILE_NAME, *ranks, SCORE, ERROR]


class ResultWriter:
    """Base: `write(rows)` as results arrive, `close()` at the end (also a context manager)."""

    def __init__(self, target: str | os.PathLike | None, columns: Sequence[str]):
        self.columns = list(columns)
        self.target = None if target in (None, "-", "stdout") else Path(target)
        self.count = 0

    @contextlib.contextmanager
    def _whole_text(self) -> Iterator[IO[str]]:
        """For output written in one go at the end: stdout, or a file replaced atomically."""
        if self.target is None:
            yield sys.stdout
            return
        with atomic_file(self.target) as fh:
            f = io.TextIOWrapper(fh, encoding="utf-8", newline="")
            yield f
            f.flush()
            f.detach()  # atomic_file closes (and fsyncs) the binary file

    def write(self, rows: Iterable[dict]) -> None:
        raise NotImplementedError

    def write_frame(self, frame) -> None:
        """Rows as a DataFrame with these columns (columnar writers take it without per-row dicts)."""
        self.write(frame[self.columns].to_dict("records"))

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


WRITERS: dict[str, type[ResultWriter]] = {}


def register(name: str) -> Callable[[type[ResultWriter]], type[ResultWriter]]:
    def deco(cls):
        WRITERS[name] = cls
        return cls
    return deco


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return repr(v) if isinstance(v, float) else str(v)


class _StreamingWriter(ResultWriter):
    """Each batch of rows reaches the file as it is written, so a killed run keeps what it has done.

    Rows are formatted into memory and written to an unbuffered file in one call per batch, so
    after a full disk the file is cut back to exactly the rows that were whole before it.
    """

    def __init__(self, target, columns):
        super().__init__(target, columns)
        self._text = io.StringIO()
        self._file = None
        self._kept = 0  # bytes of whole rows in the file
        if self.target is not None:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.target, "wb", buffering=0)

    def _write_row(self, row: dict) -> None:
        raise NotImplementedError

    def write(self, rows):
        n = 0
        for r in rows:
            self._write_row(r)
            n += 1
        self._emit()
        self.count += n

    def _emit(self) -> None:
        text = self._text.getvalue()
        self._text.seek(0)
        self._text.truncate()
        if self._file is None:
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        data = text.encode("utf-8")
        try:
            view = memoryview(data)
            while view:
                view = view[self._file.write(view):]
        except OSError as e:
            if not is_disk_full(e):
                raise
            self._file.truncate(self._kept)  # needs no free space
            self._file.close()
            self._file = None
            raise DiskFull(self.target, f"{self.target} with its first {self.count:,} rows (whole rows only)",
                           "free some space and re-run the same command: it writes the file again") from None
        self._kept += len(data)

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None


@register("csv")
class CsvWriter(_StreamingWriter):
    """Comma-separated, a header row, floats at full precision (as pandas writes them)."""

    def __init__(self, target, columns):
        super().__init__(target, columns)
        self._w = csv.writer(self._text, lineterminator="\n")
        self._w.writerow(self.columns)
        self._emit()

    def _write_row(self, row):
        self._w.writerow([_cell(row.get(c)) for c in self.columns])


@register("jsonl")
class JsonLinesWriter(_StreamingWriter):
    """One JSON object per line: easy to stream into other tools."""

    def _write_row(self, row):
        self._text.write(json.dumps({c: row.get(c) for c in self.columns if c in row}, ensure_ascii=False) + "\n")


@register("table")
class TableWriter(ResultWriter):
    """An aligned text table for reading in a terminal (written when the run ends)."""

    def __init__(self, target, columns):
        super().__init__(target, columns)
        self._rows: list[list[str]] = []

    def write(self, rows):
        for r in rows:
            self._rows.append([(f"{r[c]:.6g}" if isinstance(r.get(c), float) else _cell(r.get(c))) for c in self.columns])
            self.count += 1

    def close(self):
        cols = [c for i, c in enumerate(self.columns) if c != "error" or any(row[i] for row in self._rows)]
        keep = [self.columns.index(c) for c in cols]
        widths = [max([len(c)] + [len(row[i]) for row in self._rows]) for c, i in zip(cols, keep)]
        line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
        out = [line, "| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |", line]
        out += ["| " + " | ".join(row[i].ljust(w) for i, w in zip(keep, widths)) + " |" for row in self._rows]
        out.append(line)
        with self._whole_text() as f:
            f.write("\n".join(out) + "\n")


@register("parquet")
class ParquetWriter(ResultWriter):
    """Columnar output for large runs; row groups are flushed to a temporary file as results
    arrive, and it replaces the target when the run ends (a Parquet file is valid only whole)."""

    def __init__(self, target, columns):
        super().__init__(target, columns)
        if self.target is None:
            raise ValueError("parquet output needs --output FILE")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self._pending: list[dict] = []
        self._writer = None
        self._tmp = self.target.with_name(f".{self.target.name}.partial")

    def write(self, rows):
        self._pending.extend(rows)
        if len(self._pending) >= 10_000:
            with self._or_disk_full():
                self._flush()

    def _flush(self):
        import pyarrow as pa

        if not self._pending:
            return
        table = pa.Table.from_pylist([{c: r.get(c) for c in self.columns} for r in self._pending],
                                     schema=self._writer.schema if self._writer else None)
        self._write_table(table)
        self.count += len(self._pending)
        self._pending = []

    def _write_table(self, table) -> None:
        import pyarrow.parquet as pq

        if self._writer is None:
            self._writer = pq.ParquetWriter(self._tmp, table.schema)
        self._writer.write_table(table.cast(self._writer.schema))

    def write_frame(self, frame):
        import pyarrow as pa

        with self._or_disk_full():
            self._flush()
            table = pa.Table.from_pandas(frame[self.columns], preserve_index=False)
            self._write_table(table.cast(pa.schema([pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f
                                                    for f in table.schema])))
            self.count += table.num_rows

    def close(self):
        if self._tmp is None:  # given up after a full disk
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        with self._or_disk_full():
            if self._writer is None and not self._pending:
                pq.write_table(pa.table({c: pa.array([], pa.string()) for c in self.columns}), self._tmp)
            else:
                self._flush()
                self._writer.close()
            os.replace(self._tmp, self.target)

    @contextlib.contextmanager
    def _or_disk_full(self) -> Iterator[None]:
        """A full disk: drop the temporary file and say that the target is as it was."""
        try:
            yield
        except (OSError, RuntimeError) as e:  # pyarrow wraps ENOSPC in its own OSError subclasses
            if not is_disk_full(e):
                raise
            with contextlib.suppress(Exception):
                if self._writer is not None:
                    self._writer.close()
            self._tmp.unlink(missing_ok=True)
            self._tmp = None
            kept = f"{self.target} as it was before this run" if self.target.exists() else \
                f"nothing: a Parquet file is written whole at the end ({self.target} not created)"
            raise DiskFull(self.target, kept) from None


@register("json")
class JsonWriter(ResultWriter):
    """pybioclip's embedding file: {"model": …, "embeddings": {file_name: [floats]}}."""

    def __init__(self, target, columns, header: dict | None = None):
        super().__init__(target, columns)
        self.header = header or {}
        self._items: dict[str, list[float]] = {}

    def write(self, rows):
        for r in rows:
            self._items[r["file_name"]] = r.get("embedding") if r.get("embedding") is not None else r.get("error")
            self.count += 1

    def close(self):
        with self._whole_text() as f:
            json.dump({**self.header, "embeddings": self._items}, f, indent=4)
            f.write("\n")


def format_for(output: str | None, fmt: str | None, default: str = "csv") -> str:
    """The explicit format, else the output file's extension, else `default`."""
    if fmt:
        if fmt not in WRITERS:
            raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(WRITERS)}")
        return fmt
    ext = Path(output).suffix.lower().lstrip(".") if output and output not in ("-", "stdout") else ""
    return {"csv": "csv", "jsonl": "jsonl", "ndjson": "jsonl", "parquet": "parquet", "pq": "parquet",
            "json": "json", "txt": "table"}.get(ext, default)


def open_writer(fmt: str, output: str | os.PathLike | None, columns: Sequence[str], **kwargs) -> ResultWriter:
    return WRITERS[fmt](output, columns, **kwargs)

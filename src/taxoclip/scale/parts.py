"""Resumable output of a long run: a directory of Parquet parts, each a fixed slice of the inputs.

    DIR/manifest.json      the task, its identity (options, weights, files it names), the inputs' hash
    DIR/inputs.parquet     the input list, frozen when the run began (name, path, offset, size)
    DIR/part-00000.parquet rows of inputs [0, part_size), committed atomically when complete
    ...

A part exists completely or not at all (`durable.atomic_file`), so a run killed at any moment
(SIGKILL, a lost node) is finished by re-running the same command: finished parts are skipped,
whichever engine made them. A re-run with other options or other inputs is refused with one
line, never mixed in. `merge` joins the parts in input order into any result format.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from ..durable import atomic_file, write_atomic
from ..errors import InputError, TaxoclipError
from ..io.images import ImageRef
from .tasks import Task, task_from_dict

__all__ = ["PartDir", "DEFAULT_PART_SIZE", "is_part_dir_target", "merge"]

DEFAULT_PART_SIZE = 10_000  # ~1-5 min of one CPU, seconds of a GPU: little lost to a kill, few files
MANIFEST, INPUTS = "manifest.json", "inputs.parquet"
_INPUT_SCHEMA = pa.schema([("name", pa.string()), ("path", pa.string()), ("offset", pa.int64()), ("size", pa.int64())])


def is_part_dir_target(output: str | None) -> bool:
    """`--output DIR/` (a trailing slash, or a folder that exists) asks for resumable parts."""
    return bool(output) and output not in ("-", "stdout") and (output.endswith(("/", os.sep)) or os.path.isdir(output))


def _schema(columns: Sequence[str]) -> pa.Schema:
    types = {"score": pa.float64(), "embedding": pa.list_(pa.float32())}
    return pa.schema([(c, types.get(c, pa.string())) for c in columns])


class PartDir:
    """The parts of one run in one directory (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, task: Task, refs: Sequence[ImageRef], identity: dict, part_size: int):
        self.path, self.task, self.refs = Path(path), task, list(refs)
        self.part_size = max(1, int(part_size))
        self.identity = identity
        self.columns = task.columns()
        self.schema = _schema(self.columns)

    # ----- creating or re-opening ----------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, task: Task, refs: Sequence[ImageRef], *,
             part_size: int = DEFAULT_PART_SIZE) -> "PartDir":
        """Start a run in `path`, or re-open the run it holds if it is the same run."""
        path = Path(path)
        bad = [r.name for r in refs if r.path is None]
        if bad:
            raise InputError(f"--output {path}/: resumable parts need files (not in-memory images): {bad[0]}")
        inputs = {"count": len(refs), "sha256": _refs_hash(refs)}
        identity = json.loads(json.dumps({"task": task.identity(), "inputs": inputs}))  # as a manifest holds it
        manifest = path / MANIFEST
        if manifest.is_file():
            held = _read_manifest(path)
            if held["identity"] != identity:
                raise InputError(f"{path}: holds parts of another run (it differs in "
                                 f"{_differences(held['identity'], identity)}); re-run with the options and inputs "
                                 "it was started with, or choose another --output directory")
            part_size = held["part_size"]
        elif path.exists() and (not path.is_dir() or any(p for p in path.iterdir() if not p.name.startswith("."))):
            raise InputError(f"--output {path}/: not an empty folder and holds no taxoclip parts; choose a new one")
        else:
            path.mkdir(parents=True, exist_ok=True)
            table = pa.Table.from_pylist([{"name": r.name, "path": r.path, "offset": r.offset, "size": r.size}
                                          for r in refs], schema=_INPUT_SCHEMA)
            with atomic_file(path / INPUTS) as fh:
                pq.write_table(table, fh)
            write_atomic(manifest, json.dumps({"task": task.as_dict(), "identity": identity, "part_size": part_size,
                                               "columns": task.columns(), "parts": _n_parts(len(refs), part_size)},
                                              indent=2).encode())
        for tmp in path.glob(".part-*"):  # the unfinished write of a killed run
            tmp.unlink(missing_ok=True)
        return cls(path, task, refs, identity, part_size)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PartDir":
        """Re-open a run from its directory alone (a worker process, `merge`)."""
        path = Path(path)
        held = _read_manifest(path)
        table = pq.read_table(path / INPUTS)
        refs = [ImageRef(n, path=p, offset=o, size=s) for n, p, o, s in
                zip(*(table.column(c).to_pylist() for c in ("name", "path", "offset", "size")))]
        return cls(path, task_from_dict(held["task"]), refs, held["identity"], held["part_size"])

    # ----- parts ---------------------------------------------------------------------------
    @property
    def n_parts(self) -> int:
        return _n_parts(len(self.refs), self.part_size)

    def part_refs(self, i: int) -> list[ImageRef]:
        return self.refs[i * self.part_size:(i + 1) * self.part_size]

    def part_path(self, i: int) -> Path:
        return self.path / f"part-{i:05d}.parquet"

    def done(self) -> list[int]:
        return [i for i in range(self.n_parts) if self.part_path(i).is_file()]

    def pending(self) -> list[int]:
        return [i for i in range(self.n_parts) if not self.part_path(i).is_file()]

    def write(self, i: int, rows: list[dict]) -> None:
        """Commit part `i` (all its rows at once: a part is complete or absent)."""
        table = pa.Table.from_pylist([{c: r.get(c) for c in self.columns} for r in rows], schema=self.schema)
        try:
            with atomic_file(self.part_path(i)) as fh:
                pq.write_table(table, fh)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise TaxoclipError(f"no space left on the device writing {self.part_path(i)}; the {len(self.done())} "
                                "parts done are kept: free some space and re-run the same command") from None

    def check_done(self) -> None:
        missing = self.pending()
        if missing:
            raise InputError(f"{self.path}: {len(missing)} of {self.n_parts} parts are not done (first: part "
                             f"{missing[0]}); re-run the command that made it to finish them")

    def rows(self) -> Iterator[list[dict]]:
        """Each part's rows in input order (all parts must be done)."""
        self.check_done()
        for i in range(self.n_parts):
            yield pq.read_table(self.part_path(i)).to_pylist()


def merge(path: str | os.PathLike, output: str | None, fmt: str | None = None) -> int:
    """Join a finished run's parts, in input order, into one output file; return the row count."""
    from ..io.writers import format_for, open_writer

    parts = PartDir.load(path)
    parts.check_done()  # before the output is opened: an unfinished run leaves no partial file
    default = "json" if parts.task.kind == "embed" else "csv"
    fmt = format_for(output, fmt, default=default)
    extra = {"header": {"model": parts.task.model}} if fmt == "json" else {}
    with open_writer(fmt, output, parts.columns, **extra) as writer:
        for rows in parts.rows():
            writer.write(rows)
    return writer.count


# ----- helpers -------------------------------------------------------------------------------
def _n_parts(n: int, size: int) -> int:
    return (n + size - 1) // size


def _refs_hash(refs: Sequence[ImageRef]) -> str:
    h = hashlib.sha256()
    for r in refs:
        h.update(f"{r.name}\x1f{r.path}\x1f{r.offset}\x1f{r.size}\x1e".encode())
    return h.hexdigest()


def _read_manifest(path: Path) -> dict:
    try:
        held = json.loads((path / MANIFEST).read_text())
        held["identity"], held["task"], held["part_size"]  # noqa: B018 (all three must be there)
        return held
    except FileNotFoundError:
        raise InputError(f"{path}: no {MANIFEST}; not a directory of taxoclip parts") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}/{MANIFEST}: unreadable ({e})") from None


def _differences(a: dict, b: dict, prefix: str = "") -> str:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            inner = _differences(a[k], b[k], f"{prefix}{k}.")
            if inner:
                out.append(inner)
        elif a.get(k) != b.get(k):
            out.append(f"{prefix}{k}")
    return ", ".join(out)

"""Input sources: a registry of (detector, reader) pairs that turn a path into `Record`s.

`build` accepts any mix of inputs; each is claimed by the first registered source kind whose
detector accepts it, so adding a kind means registering one more entry, not another branch:

| kind | accepts |
|---|---|
| `dwca` | a Darwin Core Archive: a `.zip`, or a folder with `meta.xml` or `occurrence.txt` |
| `shards` | a webdataset shard set: a `.tar` file or a folder holding `.tar` files (any depth) |
| `table` | a CSV/TSV/Parquet table with a `filepath` or `url` column, or a folder holding one |
| `images` | a folder of images without a table (taxonomy from sub-folder names, if any) |

Readers yield records in a stable order (sorted files, table row order), which is what makes
a build deterministic and resumable.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..errors import InputError
from .records import Record

__all__ = ["SourceOptions", "SourceKind", "SOURCES", "register_source", "detect_source", "read_source",
           "read_inputs"]


@dataclass(frozen=True)
class SourceOptions:
    """Options some readers need: a taxa table to join a label column to, and its column."""

    taxa: str | None = None
    label_column: str = "label"
    data_source: str | None = None  # override the provider name of every record
    workdir: str | None = None  # scratch space for readers that need it (the DwC-A media index)
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SourceKind:
    name: str
    detect: Callable[[Path], bool]
    read: Callable[[Path, SourceOptions], Iterator[Record]]
    description: str
    priority: int = 100  # lower is asked first (more specific kinds first)


SOURCES: list[SourceKind] = []


def register_source(name: str, detect: Callable[[Path], bool], description: str, priority: int = 100):
    """Decorator: register `read(path, options)` as the reader of inputs `detect` accepts.

    Detectors are asked in `priority` order, so the registry does not depend on import order.
    """

    def deco(read: Callable[[Path, SourceOptions], Iterator[Record]]):
        SOURCES[:] = [k for k in SOURCES if k.name != name]
        SOURCES.append(SourceKind(name, detect, read, description, priority))
        SOURCES.sort(key=lambda k: k.priority)
        return read

    return deco


def detect_source(path: str | os.PathLike) -> SourceKind:
    """The source kind for an input path, or an `InputError` saying what was expected."""
    _load_builtin_sources()
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{path}: no such file or folder")
    for kind in SOURCES:
        if kind.detect(p):
            return kind
    kinds = "; ".join(f"{k.name}: {k.description}" for k in SOURCES)
    raise InputError(f"{path}: not a dataset input I can read (expected {kinds})")


def read_source(path: str | os.PathLike, options: SourceOptions = SourceOptions()) -> Iterator[Record]:
    kind = detect_source(path)
    for record in kind.read(Path(path).expanduser(), options):
        if options.data_source:
            record.data_source = options.data_source
        yield record


def read_inputs(paths: Iterable[str | os.PathLike], options: SourceOptions = SourceOptions()) -> Iterator[Record]:
    """Records of every input, one input after the other, in the order given."""
    paths = list(paths)
    for p in paths:  # fail on a bad input before any work is done
        detect_source(p)
    for p in paths:
        yield from read_source(p, options)


def _load_builtin_sources() -> None:
    from . import dwca_source, shards, tables  # noqa: F401  (they register themselves on import)

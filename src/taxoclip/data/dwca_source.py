"""Registers Darwin Core Archives (GBIF/iNaturalist exports) as a build source.

The reader itself is `taxoclip.data.dwca.read_dwca`; its records carry image URLs, which the
builder fetches with `taxoclip.data.fetch.fetch_all`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from .records import Record
from .sources import SourceOptions, register_source

_MARKERS = ("meta.xml", "occurrence.txt")


def is_dwca(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() == ".zip"
    if path.is_dir():
        names = {p.name.lower() for p in path.iterdir()}
        return any(m in names for m in _MARKERS)
    return False


@register_source("dwca", is_dwca, "a Darwin Core Archive (.zip, or a folder with meta.xml/occurrence.txt)",
                 priority=10)
def read(path: Path, options: SourceOptions) -> Iterator[Record]:
    from .dwca import read_dwca

    return read_dwca(path, workdir=options.workdir)

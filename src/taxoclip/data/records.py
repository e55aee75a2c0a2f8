"""`Record`: one image on its way into a Tree-of-Life dataset, with taxonomy and provenance.

Every source adapter (shards, folders + tables, Darwin Core archives) yields Records; the
builder aligns, fetches, decodes, deduplicates, splits and writes them. An image comes as
bytes (`image`), a local file (`path`) or a URL to fetch (`url`); exactly one is expected.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..taxonomy import Taxon

__all__ = ["Record"]


@dataclass
class Record:
    source_id: str  # occurrence/record id: the split key (one occurrence never straddles splits)
    taxon: Taxon
    data_source: str  # provider or input name ("bio-mini", "gbif", a folder's name)
    origin: str  # where the image comes from, for reports: a path, a URL, shard.tar/key
    image: bytes | None = None  # encoded image bytes, or
    url: str | None = None  # a URL to fetch
    license: str = ""
    traits: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)  # anything else worth keeping in <uuid>.json
    scientific_name: str = ""  # the name as the source gave it (for backbone lookups)
    resolution: str = "given"  # how the taxonomy was resolved: given | backbone:<name> | unresolved
    path: str | None = None  # a local image file, read by the worker that decodes it
    error: str = ""  # set by a reader that could not produce the image: reported, never built

"""Webdataset shard sets as a build source: `<key>.jpg` + `<key>.json` samples in `.tar` files.

Reads bio-mini, the TreeOfLife shards and taxoclip's own output alike. Shards are streamed
(`tarfile` in stream mode), so memory holds one sample at a time. The JSON gives the taxonomy
(any keys `Taxon.from_record` reads: `kingdom` … `genus`, `species`, `scientificName`,
`common_name`), `source_id` (else the sample key), `data_source` (else the shard set's
folder name), `license`/`license_note`, `traits`, and everything else is kept as metadata.

Members are read into memory, never extracted, so no name in a shard is ever a path written
to. Members a well-formed shard never has (links, devices, names that are absolute or climb
out with `..`) become error records, counted in the build's report as "refused tar member".
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Iterator

from ..io.images import IMAGE_EXTENSIONS
from ..taxonomy import Taxon
from .records import Record
from .sources import SourceOptions, register_source

__all__ = ["is_shard_set", "shard_files", "read_shard_set"]

_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_IMAGE_EXTS = tuple(e.lstrip(".") for e in sorted(IMAGE_EXTENSIONS))
# JSON keys that become Record fields rather than metadata.
_RECORD_KEYS = {"source_id", "data_source", "license", "license_note", "traits", "scientific_name", "uuid"}
_RANK_KEYS = {"kingdom", "phylum", "class", "order", "family", "genus", "species", "species_epithet",
              "specificepithet", "scientificname", "common_name", "commonname", "vernacularname", "common"}


def _is_tar(path: Path) -> bool:
    return path.name.lower().endswith(_TAR_SUFFIXES)


def shard_files(path: Path) -> list[Path]:
    """The shards of a shard set, sorted; a folder is searched at any depth."""
    if path.is_file():
        return [path]
    return sorted((p for p in path.rglob("*") if p.is_file() and _is_tar(p)
                   and not any(part.startswith(".") for part in p.relative_to(path).parts)),
                  key=lambda p: p.relative_to(path).as_posix())


def is_shard_set(path: Path) -> bool:
    if path.is_file():
        return _is_tar(path)
    return path.is_dir() and bool(shard_files(path))


def _split_key(name: str) -> tuple[str, str]:
    """webdataset's convention: the key is the path up to the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


@register_source("shards", is_shard_set, "a webdataset shard set (.tar, or a folder of .tar files)", priority=20)
def read_shard_set(path: Path, options: SourceOptions) -> Iterator[Record]:
    default_source = (path.parent.name if path.is_file() else path.name) or "shards"
    for shard in shard_files(path):
        yield from _read_shard(shard, default_source)


def _read_shard(shard: Path, default_source: str) -> Iterator[Record]:
    key, files = None, {}
    try:
        with tarfile.open(shard, "r|*") as tar:
            for member in tar:
                refusal = _member_refusal(member)
                if refusal is not None:
                    yield Record(source_id=f"{shard.name}:{member.name}", taxon=Taxon(), data_source=default_source,
                                 origin=f"{shard}/{member.name}", error=f"refused tar member: {refusal}")
                    continue
                if not member.isfile():
                    continue
                k, ext = _split_key(member.name)
                if k != key and key is not None:
                    yield _record(shard, key, files, default_source)
                    files = {}
                key = k
                files[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        if key is not None and files:
            yield _record(shard, key, files, default_source)
        yield Record(source_id=f"{shard.name}:unreadable", taxon=Taxon(), data_source=default_source,
                     origin=str(shard), error=f"cannot read shard past this point ({e})")
        return
    if key is not None:
        yield _record(shard, key, files, default_source)


def _member_refusal(member: tarfile.TarInfo) -> str | None:
    """Why a member is not a sample file (None for regular files and folders)."""
    if member.isdir():
        return None
    if member.issym() or member.islnk():
        kind = "symbolic" if member.issym() else "hard"
        return f"{member.name!r} is a {kind} link (to {member.linkname!r})"
    if not member.isfile():
        return f"{member.name!r} is not a regular file"
    name = member.name.replace("\\", "/")
    if name.startswith("/") or ".." in name.split("/"):
        return f"{member.name!r} names a path outside the archive"
    return None


def _record(shard: Path, key: str, files: dict[str, bytes], default_source: str) -> Record:
    image_ext = next((e for e in _IMAGE_EXTS if e in files), None)
    origin = f"{shard}/{key}.{image_ext or 'jpg'}"
    meta: dict = {}
    info: dict = {}
    if "json" in files:
        try:
            info = json.loads(files["json"])
            if not isinstance(info, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            meta["unresolved_reason"] = f"unreadable {key}.json ({e})"
            info = {}
    try:
        taxon = Taxon.from_record(info)
    except ValueError as e:
        meta["taxonomy_error"] = str(e)
        taxon = Taxon()
    meta.update({k: v for k, v in info.items() if k not in _RECORD_KEYS and k.lower() not in _RANK_KEYS})
    traits = info.get("traits") if isinstance(info.get("traits"), dict) else {}
    record = Record(
        source_id=str(info.get("source_id") or key),
        taxon=taxon,
        data_source=str(info.get("data_source") or default_source),
        origin=origin,
        image=files.get(image_ext) if image_ext else None,
        license=str(info.get("license") or info.get("license_note") or ""),
        traits=traits,
        meta=meta,
        scientific_name=str(info.get("scientific_name") or info.get("scientificName") or ""),
    )
    if image_ext is None:
        record.error = f"sample {key} has no image (members: {', '.join(sorted(files))})"
    return record

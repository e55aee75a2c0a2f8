"""The evaluation side of leakage control: fingerprints of every `--exclude` image.

Built once per build (in worker processes) into `OUT/.work/exclude/` and reused by a resumed
build: MD5s and PDQ hashes live in `prints.jsonl` and are indexed in the main process; the
thumbnails of the `aligned` rule are two raw arrays that workers memory-map (one shared copy).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterable

from .hashing import HammingIndex
from .parallel import ordered_map
from .records import Record
from .sources import SourceOptions, read_inputs
from .worker import Job, fingerprint_batch

__all__ = ["ExclusionSet", "build_exclusion"]


@dataclass
class ExclusionSet:
    """Main-process view: exact and PDQ lookups against the evaluation images."""

    origins: list[str] = field(default_factory=list)
    md5: dict[str, int] = field(default_factory=dict)
    pdq: HammingIndex | None = None  # items are evaluation items (indices into `origins`)
    thumbs_dir: Path | None = None
    errors: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.origins)

    def exact(self, md5: str) -> str | None:
        i = self.md5.get(md5)
        return None if i is None else self.origins[i]

    def near(self, pdq: bytes) -> tuple[str, int] | None:
        if self.pdq is None:
            return None
        hit = self.pdq.nearest(pdq)
        return None if hit is None else (self.origins[hit[0]], hit[1])


def _jobs(records: Iterable[Record]) -> Iterable[tuple[Record, Job]]:
    for seq, r in enumerate(records):
        yield r, Job(seq, image=r.image, path=r.path, error=r.error or ("needs download: URL inputs cannot be "
                                                                       "used with --exclude" if r.url and r.image is None and not r.path else ""))


def build_exclusion(paths: list[str], folder: Path, *, threshold: int, min_quality: int, workers: int,
                    source_options: SourceOptions = SourceOptions(), progress=None,
                    mapper=ordered_map) -> ExclusionSet:
    """Fingerprint the evaluation inputs (or load the fingerprints a previous run made);
    `mapper` runs the worker batches (see `BuildOptions.mapper`)."""
    done = folder / "DONE"
    if not done.exists():
        _fingerprint(paths, folder, workers, source_options, progress, mapper)
    ex = ExclusionSet(pdq=HammingIndex(threshold) if threshold else None, thumbs_dir=folder)
    with open(folder / "prints.jsonl", encoding="utf-8") as f:
        for line in f:
            p = json.loads(line)
            if p.get("error"):
                ex.errors.append({"origin": p["origin"], "data_source": "(exclude)", "source_id": "",
                                  "reason": f"evaluation image skipped: {p['error']}"})
                continue
            i = len(ex.origins)
            ex.origins.append(p["origin"])
            ex.md5.setdefault(p["md5"], i)
            if ex.pdq is not None and p["quality"] >= min_quality:
                ex.pdq.add(i, bytes.fromhex(p["pdq"]))
    return ex


def _fingerprint(paths: list[str], folder: Path, workers: int, source_options: SourceOptions, progress,
                 mapper=ordered_map) -> None:
    from ..durable import write_atomic

    folder.mkdir(parents=True, exist_ok=True)
    records = read_inputs(paths, source_options)
    pairs = _jobs(records)

    def batches():
        while True:
            chunk = list(islice(pairs, 32))
            if not chunk:
                return
            origins.extend(r.origin for r, _ in chunk)
            yield [j for _, j in chunk]

    origins: list[str] = []
    with open(folder / "prints.jsonl", "w", encoding="utf-8") as prints, \
            open(folder / "retrieval.f32", "wb") as retrieval, open(folder / "stored.u8", "wb") as stored, \
            mapper(fingerprint_batch, workers=workers) as pool:
        for results in pool(batches()):
            for p in results:
                origin = origins[p.seq]
                if p.error:
                    prints.write(json.dumps({"origin": origin, "error": p.error}) + "\n")
                else:
                    prints.write(json.dumps({"origin": origin, "md5": p.md5, "pdq": p.pdq.hex(),
                                             "quality": p.quality}) + "\n")
                    retrieval.write(p.retrieval.astype("<f4").tobytes())
                    stored.write(p.stored.tobytes())
                if progress is not None:
                    progress.update(1)
    write_atomic(folder / "DONE", b"")

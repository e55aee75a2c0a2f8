"""`verify`: is a built folder whole? Every shard readable, and the catalog matches the shards.

Checks, per sample: the image decodes; the JSON parses and names the same uuid, split and
taxonomy as the catalog row; the ten caption files exist and read exactly as
`taxoclip.taxonomy.captions` renders the row's taxon; the sample sits in the shard the
catalog names. Per folder: no catalog row without a sample, no sample without a row, no uuid
twice, no unfinished shard (`.tar.tmp`) left behind.
"""
from __future__ import annotations

import io
import json
import tarfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..taxonomy import CAPTION_FILES, captions
from .catalog import read_catalog, taxon_of_row

__all__ = ["VerifyReport", "verify"]

_MAX_LISTED = 50


@dataclass
class VerifyReport:
    shards: int = 0
    samples: int = 0
    catalog_rows: int = 0
    problems: list[str] = field(default_factory=list)
    n_problems: int = 0

    @property
    def ok(self) -> bool:
        return self.n_problems == 0

    def add(self, problem: str) -> None:
        self.n_problems += 1
        if len(self.problems) < _MAX_LISTED:
            self.problems.append(problem)

    def summary(self) -> str:
        head = (f"{self.shards} shards, {self.samples} samples, {self.catalog_rows} catalog rows: "
                + ("OK" if self.ok else f"{self.n_problems} problem(s)"))
        more = [f"  ... and {self.n_problems - len(self.problems)} more"] if self.n_problems > len(self.problems) else []
        return "\n".join([head, *(f"  {p}" for p in self.problems), *more])


def verify(out: str | Path, *, decode: bool = True) -> VerifyReport:
    """Check a built folder; `decode=False` skips decoding images (faster)."""
    out = Path(out)
    if not (out / "catalog.parquet").is_file():
        raise InputError(f"{out}: no catalog.parquet (not a built dataset, or the build has not finished)")
    report = VerifyReport()
    df = read_catalog(out)
    report.catalog_rows = len(df)
    rows: dict[str, dict] = {}
    for row in df.to_dict("records"):
        if row["uuid"] in rows:
            report.add(f"catalog: uuid {row['uuid']} appears twice")
        rows[row["uuid"]] = row
    shards = sorted({p.relative_to(out).as_posix() for p in out.rglob("shard-*.tar")} |
                    set(df["shard"].unique() if len(df) else ()))
    for tmp in out.rglob("shard-*.tar.tmp"):
        report.add(f"{tmp.relative_to(out)}: unfinished shard left behind (re-run the build command)")
    seen: set[str] = set()
    for shard in shards:
        report.shards += 1
        _check_shard(out, shard, rows, seen, report, decode)
    for uid in rows.keys() - seen:
        report.add(f"catalog row {uid} ({rows[uid]['shard']}): no such sample in the shards")
    return report


def _check_shard(out: Path, shard: str, rows: dict, seen: set, report: VerifyReport, decode: bool) -> None:
    if Path(shard).is_absolute() or ".." in Path(shard).parts:  # a hand-edited or hostile catalog
        report.add(f"{shard}: named in the catalog, but outside the folder (not read)")
        return
    path = out / shard
    if not path.is_file():
        report.add(f"{shard}: named in the catalog but missing")
        return
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    order: list[str] = []
    try:
        with tarfile.open(path, "r:") as tar:  # read into memory, never extracted
            for m in tar:
                if not m.isfile():
                    if not m.isdir():  # a link or a device: the builder never writes one
                        report.add(f"{shard}: member {m.name!r} is not a regular file")
                    continue
                key, _, ext = m.name.partition(".")
                if key not in samples:
                    order.append(key)
                samples[key][ext] = tar.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        report.add(f"{shard}: unreadable ({e})")
        return
    expected = {"jpg", "json", *CAPTION_FILES}
    for key in order:
        report.samples += 1
        files = samples[key]
        where = f"{shard}/{key}"
        if key in seen:
            report.add(f"{where}: uuid appears in more than one place")
        seen.add(key)
        missing, extra = expected - files.keys(), files.keys() - expected
        if missing or extra:
            report.add(f"{where}: members differ (missing {sorted(missing)}, unexpected {sorted(extra)})")
        row = rows.get(key)
        if row is None:
            report.add(f"{where}: sample not in the catalog")
            continue
        if row["shard"] != shard:
            report.add(f"{where}: catalog says it is in {row['shard']}")
        try:
            meta = json.loads(files.get("json", b"{}"))
        except ValueError as e:
            report.add(f"{where}.json: unreadable ({e})")
            meta = {}
        for k_json, k_row in (("uuid", "uuid"), ("split", "split"), ("kingdom", "kingdom"), ("genus", "genus"),
                              ("species_epithet", "species_epithet"), ("source_id", "source_id")):
            if k_json in meta and str(meta[k_json]) != str(row[k_row]):
                report.add(f"{where}.json: {k_json} {meta[k_json]!r} but the catalog says {row[k_row]!r}")
        try:
            want = captions(taxon_of_row(row))
        except ValueError as e:
            report.add(f"{where}: catalog taxonomy unusable ({e})")
            want = {}
        for name, text in want.items():
            if name in files and files[name].decode("utf-8", "replace") != text:
                report.add(f"{where}.{name}: {files[name].decode('utf-8', 'replace')!r}, expected {text!r}")
        if decode and "jpg" in files:
            try:
                from PIL import Image

                with Image.open(io.BytesIO(files["jpg"])) as img:
                    img.load()
            except Exception as e:  # any decoder failure is a problem to report, not to raise
                report.add(f"{where}.jpg: does not decode ({e})")

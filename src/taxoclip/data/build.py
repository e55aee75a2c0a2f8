"""`build`: sources -> aligned, fetched, processed, deduplicated, split, sharded training data.

The pipeline, one stream in input order:

    read sources -> align taxonomy -> fetch URLs -> [workers: decode, check, hash, resize,
    encode, crop-tolerant leak check] -> decide (errors, leaks, duplicates) -> split -> shards

Everything that makes a decision runs in the main process in input order (sequence numbers
given when records are read); workers only compute. So the output depends on the inputs and
the options alone, not on timing or the number of workers, and a sample's uuid (uuid5 of
data source, source id and image MD5) is the same in every run.

Resume: every `checkpoint_every` records, open shards are fsynced and a checkpoint part is
written (see `workstate`). Re-running the same command after a crash or SIGKILL reloads the
parts (counters, shard states), rewinds the index of kept images (`kept`) to the checkpoint,
truncates open shards to their checkpointed length, skips the records already decided, and
continues; the result is byte-identical to an uninterrupted run. Memory holds a bounded window
of images in flight and one checkpoint's rows, whatever the input size: the hashes of kept
images are on disk, and the final statistics are computed by streaming the catalog.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import re
import sys
import tempfile
import uuid as uuidlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..durable import DiskFull, is_disk_full
from ..errors import InputError, TaxoclipError
from ..io.budget import DecodeBudget, default_budget
from ..taxonomy import captions
from .align import Aligner, load_backbone
from .catalog import REPORTS, write_catalog, write_report
from .exclusion import ExclusionSet, build_exclusion
from .imaging import ImageSpec
from .kept import KeptImages
from .leakage import AlignedMatch
from .parallel import default_workers, ordered_map
from .records import Record
from .shardwriter import ShardStream
from .sources import SourceOptions, detect_source, read_inputs
from .splits import SplitRule
from .worker import Job, Processed, init_worker, process_batch
from ..durable import write_atomic
from .workstate import WorkDir

__all__ = ["BuildConfig", "BuildOptions", "build", "sample_uuid", "OUTPUT_FILES"]

log = logging.getLogger(__name__)

UUID_NAMESPACE = uuidlib.UUID("6f1c3c2e-7a9b-5d4e-9c1a-2b3d4e5f6a7b")
OUTPUT_FILES = ("catalog.parquet", "stats.json", *REPORTS)
_BATCH = 16  # images per worker task
_SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # a split becomes a folder name


@dataclass(frozen=True)
class BuildConfig:
    """Everything that changes the output. A build in progress can only be resumed with the same."""

    image: ImageSpec = ImageSpec()
    shard_size: int = 10_000
    splits: SplitRule = SplitRule()
    split_from_source: bool = False  # keep a split the source gives (a `split` field) instead of hashing
    dedup_threshold: int = 10  # PDQ Hamming distance below which two build images are duplicates; 0: off
    exclude_threshold: int = 10  # PDQ distance below which an image copies an evaluation image; 0: off
    aligned: AlignedMatch | None = AlignedMatch()  # crop-tolerant leak rule; None: off
    min_pdq_quality: int = 0  # hashes of lower PDQ quality (flat images) take no part in near matching
    backbones: tuple[str, ...] = ()
    keep_partial: bool = False
    source: SourceOptions = SourceOptions()

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise InputError(f"--shard-size must be at least 1, got {self.shard_size}")
        for name in ("dedup_threshold", "exclude_threshold"):
            if not 0 <= getattr(self, name) <= 64:
                raise InputError(f"{name.replace('_', '-')} must be 0-64 bits, got {getattr(self, name)}")


@dataclass
class BuildOptions:
    """How the build runs; none of this changes the output."""

    workers: int | None = None
    checkpoint_every: int = 2_000
    progress: bool | None = None  # None: a bar when stderr is a terminal
    overwrite: bool = False
    fetch: dict = field(default_factory=dict)  # keyword arguments of `fetch.fetch_all`
    # Bytes the workers together may spend decoding giant images (default: half the memory
    # available at start). Only an image that can never fit it changes the output: an error record.
    max_decode_memory: int | None = None
    # How worker batches are mapped: `parallel.ordered_map` (processes here) or an engine's
    # equivalent with the same signature (`scale.ray_engine.RayOrderedMap`: Ray actors).
    mapper: Callable = ordered_map


def sample_uuid(data_source: str, source_id: str, md5: str) -> str:
    """A sample's key: the same image of the same record gets the same uuid in every build."""
    return str(uuidlib.uuid5(UUID_NAMESPACE, f"{data_source}\x1f{source_id}\x1f{md5}"))


def _identity(inputs: list[str], exclude: list[str], config: BuildConfig) -> dict:
    cfg = asdict(config)
    cfg["source"].pop("workdir", None)
    if not exclude:  # options of --exclude do not change a build without it
        cfg.pop("aligned")
        cfg.pop("exclude_threshold")
    return {"inputs": [str(Path(p).expanduser().resolve()) for p in inputs],
            "exclude": [str(Path(p).expanduser().resolve()) for p in exclude],
            "config": json.loads(json.dumps(cfg, default=str))}


# ----- entry point ---------------------------------------------------------------------------
def build(inputs: Iterable[str | os.PathLike], out: str | os.PathLike, *, exclude: Iterable[str | os.PathLike] = (),
          config: BuildConfig = BuildConfig(), options: BuildOptions = BuildOptions()) -> dict:
    """Build (or finish building) a dataset in `out`; return its statistics (`stats.json`)."""
    inputs = [os.fspath(p) for p in inputs]
    exclude = [os.fspath(p) for p in exclude]
    if not inputs:
        raise InputError("no inputs given")
    for p in inputs + exclude:
        detect_source(p)  # a bad input fails now, naming itself
    try:
        import pdqhash  # noqa: F401
    except ImportError:
        raise TaxoclipError("taxoclip data build needs the pdqhash package (pip install pdqhash)") from None
    out = Path(out).expanduser()
    identity = _identity(inputs, exclude, config)
    work = WorkDir(out)
    if options.overwrite:
        _clear_output(out)
    finished = _finished_identity(out)
    if finished is not None and not work.exists:
        if finished != identity:
            raise InputError(f"{out} already holds a different finished build; choose another --out or pass --overwrite")
        log.info("%s is already built", out)
        return json.loads((out / "stats.json").read_text())
    _check_output_folder(out, work)
    work.begin(identity)
    builder = _Builder(inputs, exclude, out, work, identity, config, options)
    try:
        builder.run()
    except Exception as e:
        if not is_disk_full(e):
            raise
        where = getattr(e, "path", None) or getattr(e, "filename", None) or out
        raise DiskFull(where, builder.kept_on_failure(),
                       "free some space and re-run the same command: it continues from there") from None
    return json.loads((out / "stats.json").read_text())


def _finished_identity(out: Path) -> dict | None:
    path = out / "stats.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())["build"]["identity"]
    except (ValueError, KeyError):
        return None


def _check_output_folder(out: Path, work: WorkDir) -> None:
    if work.exists or not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder")
    if any(out.iterdir()):
        raise InputError(f"--out {out} is not empty and holds no taxoclip build; choose a new or empty folder")


def _clear_output(out: Path) -> None:
    """--overwrite: remove what a build writes (and nothing else) from `out`."""
    import shutil

    if not out.is_dir():
        return
    WorkDir(out).remove()
    for name in OUTPUT_FILES:
        (out / name).unlink(missing_ok=True)
    for sub in out.iterdir():
        if sub.is_dir() and all(p.name.startswith("shard-") and ".tar" in p.name for p in sub.iterdir()):
            shutil.rmtree(sub)


# ----- the build -----------------------------------------------------------------------------
@dataclass
class _Outcome:
    kind: str  # "error" | "unresolved"
    reason: str


class _Builder:
    def __init__(self, inputs, exclude, out: Path, work: WorkDir, identity: dict, config: BuildConfig,
                 options: BuildOptions):
        self.inputs, self.exclude, self.out, self.work = inputs, exclude, out, work
        self.identity, self.config, self.options = identity, config, options
        self.workers = default_workers() if options.workers is None else max(0, options.workers)
        self.source_options = SourceOptions(**{**asdict(config.source), "workdir": str(work.sub("tmp"))})
        self.progress_enabled = options.progress if options.progress is not None else sys.stderr.isatty()
        # State rebuilt from the checkpoint parts.
        self.cursor = 0
        self.n_parts = 0
        self.counts: dict[str, int] = {}
        self.reasons: dict[str, dict[str, int]] = {"errors": {}, "removed": {}, "unresolved": {}}
        self.stream_states: dict[str, dict] = {}
        self.done = False
        self.kept: KeptImages | None = None  # opened by `run`
        self._new_part()

    # ----- checkpoints ---------------------------------------------------------------------
    def _new_part(self) -> None:
        self.part = {"rows": [], "errors": [], "removed": [], "unresolved": []}

    def _load(self) -> None:
        for part in self.work.parts():
            self.n_parts += 1
            self.cursor = part["cursor"]
            self.counts = part["counts"]
            self.reasons = part["reasons"]
            self.stream_states = part["streams"]
            self.done = part.get("done", False)

    def _checkpoint(self, streams: dict[str, ShardStream], done: bool = False) -> None:
        states = {name: s.state() for name, s in streams.items()}  # shards durable first,
        self.kept.commit()  # then what they hold, then the part that points at both
        part = dict(self.part, cursor=self.cursor, counts=self.counts, reasons=self.reasons, done=done,
                    streams=states)
        self.work.write_part(self.n_parts, part)
        self.n_parts += 1
        self._new_part()

    def _count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def _reason(self, table: str, reason: str) -> None:
        key = _reason_key(reason)
        self.reasons[table][key] = self.reasons[table].get(key, 0) + 1

    # ----- run -----------------------------------------------------------------------------
    def run(self) -> None:
        self._load()
        if not self.done:
            self.kept = KeptImages(self.work.root / "kept.sqlite", self.config.dedup_threshold)
            try:
                self.kept.rewind(self.cursor)
                self._process()
            except BaseException:
                self.kept.abandon()
                raise
            self.kept.close()
        self._finalize()

    def kept_on_failure(self) -> str:
        """What a stopped build leaves for the next run of the same command to continue from."""
        parts = list(self.work.parts())
        shards = sum(1 for p in self.out.glob("*/shard-*.tar") if p.is_file())
        if not parts:
            return f"{shards} finished shards, no checkpoint yet (a re-run starts from the first record)"
        last = parts[-1]
        if last.get("done"):
            return f"all {shards} shards and the build's checkpoint (only the catalog, reports and stats.json remain)"
        return (f"{shards} finished shards and the checkpoint after record {last['cursor']:,} "
                f"({last['counts'].get('written', 0):,} images written)")

    def _progress(self, total=None, initial=0, desc=""):
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit="img", disable=not self.progress_enabled,
                    dynamic_ncols=True, smoothing=0.05)

    def _process(self) -> None:
        config = self.config
        exclusion = ExclusionSet()
        if self.exclude:
            with self._progress(desc="fingerprinting --exclude images") as bar:
                exclusion = build_exclusion(self.exclude, self.work.sub("exclude"),
                                            threshold=config.exclude_threshold, min_quality=config.min_pdq_quality,
                                            workers=self.workers, source_options=self.source_options, progress=bar,
                                            mapper=self.options.mapper)
        self.exclusion = exclusion
        backbones = [load_backbone(b) for b in config.backbones]
        self.aligner = Aligner(backbones, keep_partial=config.keep_partial)
        thumbs = str(exclusion.thumbs_dir) if (exclusion.thumbs_dir and config.aligned and len(exclusion)) else None
        streams = {name: ShardStream(self.out, name, config.shard_size, state)
                   for name, state in self.stream_states.items()}
        pending: dict[int, tuple[Record, _Outcome | None]] = {}
        since = 0
        # One budget shared by forked workers; workers of an engine that does not fork (Ray
        # actors, perhaps on other machines) cannot share it and decode under their own bound.
        budget = DecodeBudget(self.options.max_decode_memory or default_budget()) \
            if getattr(self.options.mapper, "forks", True) else None
        with self.options.mapper(process_batch, workers=self.workers, initializer=init_worker,
                                 initargs=(config.image, thumbs, config.aligned, budget)) as pool, \
                self._progress(initial=self.cursor, desc="building") as bar:
            try:
                jobs = self._jobs(pending)
                for results in pool(_batched(jobs, _BATCH)):
                    for res in results:
                        record, outcome = pending.pop(res.seq)
                        self._decide(res, record, outcome, streams)
                        self.cursor = res.seq + 1
                        since += 1
                        if since >= self.options.checkpoint_every:
                            self._checkpoint(streams)
                            since = 0
                    bar.update(len(results))
                    bar.set_postfix(kept=self.counts.get("written", 0), refresh=False)
            except BaseException:
                for s in streams.values():
                    s.abandon()
                raise
            for s in streams.values():
                s.close()
            self._checkpoint(streams, done=True)

    # ----- stages --------------------------------------------------------------------------
    def _records(self) -> Iterator[tuple[int, Record, _Outcome | None]]:
        """Source records numbered in input order, aligned; already decided ones skipped."""
        numbered = itertools.islice(enumerate(read_inputs(self.inputs, self.source_options)), self.cursor, None)
        for seq, record in numbered:
            if record.error:
                yield seq, record, _Outcome("error", record.error)
                continue
            why = self.aligner.align(record)
            yield seq, record, (_Outcome("unresolved", why) if why else None)

    def _jobs(self, pending: dict) -> Iterator[Job]:
        for seq, record, outcome in self._fetched(self._records()):
            pending[seq] = (record, outcome)
            job = Job(seq, image=record.image, path=record.path,
                      error=outcome.reason if outcome is not None else "")
            record.image = None  # the worker has it now; keep only the metadata here
            yield job

    def _fetched(self, items: Iterator[tuple[int, Record, _Outcome | None]]):
        """Download the images of URL records, keeping input order (see `_in_order`)."""
        def needs_fetch(item) -> bool:
            _, r, outcome = item
            return outcome is None and r.image is None and r.path is None and bool(r.url)

        for fetch, group in itertools.groupby(items, key=needs_fetch):
            if not fetch:
                yield from group
            else:
                yield from self._in_order(group)

    def _in_order(self, group: Iterator[tuple[int, Record, _Outcome | None]]):
        from .fetch import fetch_all

        seqs: dict[int, int] = {}
        first: list[int] = []

        def feed():
            for seq, record, _ in group:
                if not first:
                    first.append(seq)
                seqs[id(record)] = seq
                yield record

        journal = self.work.sub("fetch") / "journal.sqlite"
        buffer = _ReorderBuffer()
        for record, data, error in fetch_all(feed(), journal, **self.options.fetch):
            seq = seqs.pop(id(record))
            if data is not None:
                record.image = data
                buffer.put(seq, record, None)
            else:
                what = "download" if error.startswith("refused") else "download failed:"  # counted apart
                buffer.put(seq, record, _Outcome("error", f"{what} {error}"))
            while first and first[0] in buffer:
                yield buffer.pop(first[0])
                first[0] += 1
        while first and first[0] in buffer:
            yield buffer.pop(first[0])
            first[0] += 1
        buffer.close()

    # ----- decisions -----------------------------------------------------------------------
    def _decide(self, res: Processed, record: Record, outcome: _Outcome | None, streams) -> None:
        self._count("records")
        base = {"origin": record.origin, "data_source": record.data_source, "source_id": record.source_id}
        if outcome is not None and outcome.kind == "unresolved":
            self._count("unresolved")
            self._reason("unresolved", outcome.reason)
            self.part["unresolved"].append({**base, "scientific_name": record.scientific_name or
                                            record.taxon.scientific_name, "reason": outcome.reason})
            return
        if res.error:
            self._count("errors")
            self._reason("errors", res.error)
            self.part["errors"].append({**base, "reason": res.error})
            return
        removal = self._removal(res)
        if removal is not None:
            reason, rule, matched, score = removal
            self._count("removed")
            key = f"{reason} ({rule})"
            self.reasons["removed"][key] = self.reasons["removed"].get(key, 0) + 1
            self.part["removed"].append({**base, "reason": reason, "rule": rule, "matched": matched, "score": score})
            return
        self._write(res, record, streams)

    def _removal(self, res: Processed) -> tuple[str, str, str, str] | None:
        ex = self.exclusion
        if len(ex):
            hit = ex.exact(res.md5)
            if hit is not None:
                return "evaluation image", "exact", hit, "0"
            if res.quality >= self.config.min_pdq_quality:
                near = ex.near(res.pdq)
                if near is not None:
                    return "evaluation image", "pdq", near[0], str(near[1])
            if res.leak is not None:
                return "evaluation image", "aligned", ex.origins[res.leak[0]], f"{res.leak[1]:.4f}"
        same = self.kept.exact(res.md5)
        if same is not None:
            return "duplicate", "exact", same, "0"
        if res.quality >= self.config.min_pdq_quality:
            near = self.kept.near(res.pdq)
            if near is not None:
                return "duplicate", "pdq", near[0], str(near[1])
        return None

    def _write(self, res: Processed, record: Record, streams: dict[str, ShardStream]) -> None:
        uid = sample_uuid(record.data_source, record.source_id, res.md5)
        given = str(record.meta.get("split") or "") if self.config.split_from_source else ""
        split = given if _SPLIT_NAME.fullmatch(given) else self.config.splits.assign(record.source_id)
        if split not in streams:
            streams[split] = ShardStream(self.out, split, self.config.shard_size)
        taxon = record.taxon
        meta = {"uuid": uid, **taxon.as_dict(), "scientific_name": taxon.scientific_name,
                "taxonomic_name": taxon.taxonomic_name, "data_source": record.data_source,
                "source_id": record.source_id, "origin": record.origin, "split": split, "license": record.license,
                "traits": record.traits, "taxonomy_resolution": record.resolution,
                "width": res.size[0], "height": res.size[1], "md5": res.md5, "meta": record.meta}
        members = {"jpg": res.jpeg,
                   "json": json.dumps(meta, ensure_ascii=False, sort_keys=True, default=str).encode("utf-8")}
        for name, text in captions(taxon).items():
            members[name] = text.encode("utf-8")
        shard = streams[split].write(uid, members)
        self.part["rows"].append({
            "uuid": uid, "kingdom": taxon.kingdom, "phylum": taxon.phylum, "class": taxon.cls, "order": taxon.order,
            "family": taxon.family, "genus": taxon.genus, "species_epithet": taxon.epithet, "species": taxon.species,
            "scientific_name": taxon.scientific_name, "common": taxon.common, "data_source": record.data_source,
            "source_id": record.source_id, "split": split, "shard": shard, "origin": record.origin,
            "license": record.license, "resolution": record.resolution,
            "traits": json.dumps(record.traits, ensure_ascii=False, sort_keys=True, default=str),
            "width": res.size[0], "height": res.size[1]})
        self.kept.add(res.seq, uid, res.md5, res.pdq if res.quality >= self.config.min_pdq_quality else None)
        self._count("written")
        self._count(f"split:{split}")
        self._count(f"resolution:{record.resolution}")

    # ----- final outputs -------------------------------------------------------------------
    def _finalize(self) -> None:
        from .catalog import iter_catalog
        from .stats import STATS_COLUMNS, dataset_stats

        out, work = self.out, self.work
        write_catalog((p["rows"] for p in work.parts()), out / "catalog.parquet")
        exclusion_errors = list(_exclusion_errors(work))
        for name, columns in REPORTS.items():
            key = name.removesuffix(".csv")
            rows = itertools.chain.from_iterable(p[key] for p in work.parts())
            if key == "errors":
                rows = itertools.chain(exclusion_errors, rows)
            write_report(rows, out / name, columns)
        stats = dataset_stats(iter_catalog(out, STATS_COLUMNS))
        counts = {k: v for k, v in self.counts.items() if ":" not in k}
        if exclusion_errors:
            counts["exclude_errors"] = len(exclusion_errors)
        stats["build"] = {"identity": self.identity, "counts": counts, "errors": self.reasons["errors"],
                          "removed": self.reasons["removed"], "unresolved": self.reasons["unresolved"],
                          "exclude_images": _exclusion_count(work)}
        write_atomic(out / "stats.json", json.dumps(stats, indent=1, ensure_ascii=False).encode("utf-8"))
        work.remove()


def _exclusion_errors(work: WorkDir) -> Iterator[dict]:
    path = work.root / "exclude" / "prints.jsonl"
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            p = json.loads(line)
            if p.get("error"):
                yield {"origin": p["origin"], "data_source": "(exclude)", "source_id": "",
                       "reason": f"evaluation image skipped: {p['error']}"}


def _exclusion_count(work: WorkDir) -> int:
    path = work.root / "exclude" / "prints.jsonl"
    if not path.exists():
        return 0
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if '"error"' not in line)


def _reason_key(reason: str) -> str:
    """Group reasons for counting: "too small: 1x1, …" -> "too small"."""
    for sep in (":", " ("):
        head = reason.split(sep, 1)[0]
        if head != reason:
            return head.strip()
    return reason.strip()


def _batched(items: Iterable, n: int) -> Iterator[list]:
    it = iter(items)
    while True:
        chunk = list(itertools.islice(it, n))
        if not chunk:
            return
        yield chunk


class _ReorderBuffer:
    """Out-of-order fetch results waiting for their turn; image bytes spill to disk past a limit.

    Why: the fetcher yields in completion order, and one slow URL must not hold every later
    image in memory until it arrives.
    """

    def __init__(self, limit: int = 64 << 20):
        self.limit = limit
        self.items: dict[int, tuple[Record, _Outcome | None, tuple[int, int] | None]] = {}
        self.in_memory = 0
        self.spill = None

    def __contains__(self, seq: int) -> bool:
        return seq in self.items

    def put(self, seq: int, record: Record, outcome: _Outcome | None) -> None:
        where = None
        if record.image is not None:
            if self.in_memory + len(record.image) > self.limit:
                if self.spill is None:
                    self.spill = tempfile.TemporaryFile()
                self.spill.seek(0, os.SEEK_END)
                where = (self.spill.tell(), len(record.image))
                self.spill.write(record.image)
                record.image = None
            else:
                self.in_memory += len(record.image)
        self.items[seq] = (record, outcome, where)

    def pop(self, seq: int) -> tuple[int, Record, _Outcome | None]:
        record, outcome, where = self.items.pop(seq)
        if where is not None:
            self.spill.seek(where[0])
            record.image = self.spill.read(where[1])
        elif record.image is not None:
            self.in_memory -= len(record.image)
        if not self.items and self.spill is not None:
            self.spill.close()
            self.spill = None
        return seq, record, outcome

    def close(self) -> None:
        if self.spill is not None:
            self.spill.close()

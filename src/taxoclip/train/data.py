"""Training data: webdataset shards as deterministic streams, split across processes and workers.

The global micro-batch `m` is a pure function of (seed, m) and the data: it is the
concatenation of an equal slice from each of `S` virtual *streams*. Stream `s` reads a
disjoint share of the shards (each epoch a seeded permutation deals shards round-robin to
the streams; with fewer shards than streams every stream reads every shard and keeps every
S-th sample) in *chunks* of a few shards read interleaved, through a seeded shuffle buffer
that drains at each chunk's end. So:

* process `r` of `W` owns streams `[r*S/W, (r+1)*S/W)` and its DataLoader worker `w` a
  contiguous part of those: concatenating workers, then processes, gives the global order,
  whatever W and the worker count are (`S` fixed);
* a stream's position is (epoch, chunk, samples emitted in the chunk); resuming re-reads at
  most one chunk (tar bytes only, nothing decoded) to rebuild the shuffle buffer;
* augmentation draws from a generator seeded by the sample's position, not by worker state.

Samples are filtered before shuffling: images without captions or taxonomy are skipped, and
only the wanted split is kept (catalog.parquet's `split` column beside builder shards, or
the `split` field of each sample's JSON, or `<split>-NNN.tar` shard names).
"""
from __future__ import annotations

import functools
import glob
import io
import json
import logging
import math
import os
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..orphans import die_with_parent
from ..taxonomy import TEXT_TYPES, Taxon, render_caption

__all__ = [
    "ShardSet", "find_shards", "Position", "StreamReader", "BatchStreams", "Loader", "text_type_for_step",
    "read_samples", "count_samples", "IMAGE_EXTS", "image_member", "in_split", "accept_bio", "make_loader",
]

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_SPLIT_NAMES = ("train", "val", "valid", "validation", "test")


# ----- the text type of a step -------------------------------------------------------------------
def text_type_for_step(seed: int, step: int, types: Sequence[str]) -> str:
    """The caption type of optimiser step `step`: the same on every process and worker."""
    if len(types) == 1:
        return types[0]
    return types[int(np.random.default_rng([seed, step, 0x7E47]).integers(len(types)))]


def _rng_state(*key: int) -> int:
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]).generate_state(1, np.uint64)[0])


# ----- finding shards ---------------------------------------------------------------------------
@dataclass
class ShardSet:
    """The shards of one data stream and which of their samples belong to the wanted split."""

    urls: list[str]
    split: str = ""
    keep_keys: dict[str, frozenset] = field(default_factory=dict)  # shard url -> keys kept (mixed-split shards)
    samples: int = 0  # samples of the split when a catalog says so (0 = unknown)

    def keys_for(self, url: str) -> frozenset | None:
        return self.keep_keys.get(url)


def find_shards(specs: Sequence[str], split: str = "") -> ShardSet:
    """Expand paths, globs, brace patterns and directories into a `ShardSet` for `split`.

    A `catalog.parquet` in a shard's folder or the folder above (the dataset builder writes
    `<out>/catalog.parquet` and `<out>/<split>/shard-NNNNN.tar`) decides which samples belong
    to the split.
    """
    urls: list[str] = []
    for spec in specs:
        spec = str(spec)
        if "::" in spec or "{" in spec:
            import braceexpand

            for part in spec.split("::"):
                urls.extend(braceexpand.braceexpand(part))
            continue
        if spec.startswith(("pipe:", "http://", "https://", "gs://", "s3://")):
            urls.append(spec)
            continue
        path = Path(spec).expanduser()
        if path.is_dir():
            tars = sorted(str(p) for p in path.rglob("*.tar"))
            if split:
                named = [t for t in tars if _split_of_name(t) is not None]
                if named and len(named) == len(tars):
                    tars = [t for t in tars if _split_of_name(t) == _canon_split(split)]
            if not tars:
                raise InputError(f"no .tar shards under {path}" + (f" for split {split!r}" if split else ""))
            urls.extend(tars)
            continue
        matches = sorted(glob.glob(str(path))) if any(c in spec for c in "*?[") else [str(path)]
        if not matches:
            raise InputError(f"no shards match {spec}")
        for m in matches:
            if not os.path.isfile(m):
                raise InputError(f"shard {m} does not exist")
        urls.extend(matches)
    if not urls:
        raise InputError("no shards given")
    shards = ShardSet(urls=urls, split=split)
    catalogs: list[Path] = []
    for folder in sorted({Path(u).parent for u in urls if "://" not in u and not u.startswith("pipe:")}):
        for d in (folder, folder.parent):
            if (d / "catalog.parquet").is_file() and d / "catalog.parquet" not in catalogs:
                catalogs.append(d / "catalog.parquet")
                break
    for cat in catalogs:
        _apply_catalog(shards, cat)
    return shards


def _canon_split(name: str) -> str:
    name = name.lower()
    return "val" if name in ("valid", "validation") else name


def _split_of_name(url: str) -> str | None:
    stem = Path(url).name.split(".")[0]
    head = stem.rsplit("-", 1)[0] if "-" in stem else ""
    return _canon_split(head) if head.lower() in _SPLIT_NAMES else None


_KEY_COLUMNS = ("uuid", "key", "__key__", "id")


def _apply_catalog(shards: ShardSet, catalog: Path) -> None:
    """Restrict shards to the split using catalog.parquet (`split` + key [+ `shard`] columns).

    The `shard` column names shards relative to the catalog's folder (`train/shard-00000.tar`)
    or by file name. Shards holding none of the split are dropped unopened; shards holding
    some get the set of keys to keep; the sample count of the split is recorded.
    """
    import pyarrow.parquet as pq

    if not shards.split:
        return
    schema = pq.read_schema(catalog)
    if "split" not in schema.names:
        log.info("%s has no split column; all samples are used", catalog)
        return
    key_col = next((c for c in _KEY_COLUMNS if c in schema.names), None)
    cols = ["split"] + ([key_col] if key_col else []) + (["shard"] if "shard" in schema.names else [])
    table = pq.read_table(catalog, columns=cols).to_pandas()
    wanted = table["split"].astype(str).map(_canon_split) == _canon_split(shards.split)
    shards.samples += int(wanted.sum())
    base = catalog.parent.resolve()
    here = {}
    for u in shards.urls:
        try:
            here[u] = Path(u).resolve().relative_to(base).as_posix()
        except ValueError:
            continue  # not under this catalog's folder
    if "shard" in table.columns:
        names = table["shard"].astype(str).map(lambda s: Path(s).as_posix())
        by_shard = wanted.groupby(names)
        bare = all("/" not in n for n in by_shard.groups)
        drop = set()
        for u, rel in here.items():
            name = Path(rel).name if bare else rel
            if name not in by_shard.groups:
                continue  # not in the catalog: keep, and let each sample's JSON decide
            flags = wanted[by_shard.groups[name]]
            if not flags.any():
                drop.add(u)
            elif not flags.all():
                if key_col is None:
                    raise InputError(f"{catalog}: shard {name} mixes splits but the catalog has no key column")
                shards.keep_keys[u] = frozenset(table.loc[flags.index[flags], key_col].astype(str))
        shards.urls = [u for u in shards.urls if u not in drop]
    elif key_col is not None:
        keys = frozenset(table.loc[wanted, key_col].astype(str))
        for u in here:
            shards.keep_keys[u] = keys
    if not shards.urls:
        raise InputError(f"{catalog}: no shard holds samples of split {shards.split!r}")


# ----- reading tars --------------------------------------------------------------------------------
def _open(url: str):
    if url.startswith(("pipe:", "http://", "https://", "gs://", "s3://")):
        import webdataset as wds

        return wds.gopen(url, "rb")
    return open(url, "rb", buffering=1 << 20)


def read_samples(url: str, keep: Callable[[str], bool] | None = None) -> Iterator[dict]:
    """Yield one dict per sample of a tar: `__key__`, `__url__` and one bytes value per member suffix.

    `keep(suffix)` selects the members read; the others are skipped without being read.
    """
    try:
        with _open(url) as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
            current: dict | None = None
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name
                base = os.path.basename(name)
                if base.startswith("__") or "." not in base:
                    continue
                dot = base.index(".")
                key = os.path.join(os.path.dirname(name), base[:dot])
                suffix = base[dot + 1:].lower()
                if current is None or current["__key__"] != key or suffix in current:
                    if current is not None:
                        yield current
                    current = {"__key__": key, "__url__": url}
                if keep is None or keep(suffix):
                    current[suffix] = tar.extractfile(member).read()
            if current is not None:
                yield current
    except (OSError, tarfile.TarError) as e:
        raise InputError(f"cannot read shard {url}: {e}") from None


def count_samples(shards: ShardSet) -> int:
    """Samples with an image in the shards (of the split, by catalog keys or their JSON)."""
    n = 0
    for url in shards.urls:
        keys = shards.keys_for(url)
        for s in read_samples(url, lambda m: m in IMAGE_EXTS or m == "json"):
            if image_member(s) and in_split(s, shards.split) and (keys is None or os.path.basename(s["__key__"]) in keys):
                n += 1
    return n


def image_member(sample: dict) -> str | None:
    return next((k for k in IMAGE_EXTS if k in sample), None)


def in_split(sample: dict, split: str) -> bool:
    if not split or "json" not in sample:
        return True
    try:
        meta = json.loads(sample["json"])
    except ValueError:
        return True
    s = meta.get("split") if isinstance(meta, dict) else None
    return s is None or _canon_split(str(s)) == _canon_split(split)


# ----- one stream -------------------------------------------------------------------------------
@dataclass
class Position:
    """Where a stream is: its epoch over the shards, the chunk within it, samples emitted there."""

    epoch: int = 0
    chunk: int = 0
    emitted: int = 0

    def as_list(self) -> list[int]:
        return [self.epoch, self.chunk, self.emitted]

    @classmethod
    def from_list(cls, v: Sequence[int] | None) -> "Position":
        return cls(*map(int, v)) if v else cls()


class StreamReader:
    """An endless, deterministic sequence of raw samples: stream `index` of `n_streams`."""

    def __init__(self, shards: ShardSet, index: int, n_streams: int, *, seed: int, buffer: int,
                 chunk_shards: int, resample: bool, accept: Callable[[dict], bool],
                 start: Position | None = None, members: Callable[[str], bool] | None = None):
        self.shards, self.index, self.n_streams = shards, index, n_streams
        self.seed, self.buffer, self.chunk_shards, self.resample = seed, max(1, buffer), max(1, chunk_shards), resample
        self.accept, self.members = accept, members
        self.position = Position(**vars(start)) if start else Position()
        self.sample_split = len(shards.urls) < n_streams and not resample
        self._perm: tuple[int, np.ndarray] | None = None

    # Which shards a chunk reads, and whether this stream keeps every sample of them.
    def _chunk_urls(self, epoch: int, chunk: int) -> list[str] | None:
        urls = self.shards.urls
        if self.resample:
            rng = random.Random(_rng_state(self.seed, self.index, chunk, 0x5A4D))
            return [urls[rng.randrange(len(urls))] for _ in range(self.chunk_shards)]
        if self._perm is None or self._perm[0] != epoch:  # the same for every stream of the epoch
            self._perm = (epoch, np.random.default_rng([self.seed, epoch, 0x5E]).permutation(len(urls)))
        perm = self._perm[1]
        mine = perm if self.sample_split else perm[self.index::self.n_streams]
        part = mine[chunk * self.chunk_shards:(chunk + 1) * self.chunk_shards]
        return [urls[i] for i in part] if len(part) else None

    def _chunk_samples(self, urls: list[str]) -> Iterator[dict]:
        """Samples of the chunk's shards, interleaved one by one, filtered (before shuffling)."""
        its = [self._filtered(u) for u in urls]
        i = 0
        while its:
            i %= len(its)
            try:
                yield next(its[i])
                i += 1
            except StopIteration:
                its.pop(i)

    def _filtered(self, url: str) -> Iterator[dict]:
        keys = self.shards.keys_for(url)
        for s in read_samples(url, self.members):
            if keys is not None and os.path.basename(s["__key__"]) not in keys:
                continue
            if self.accept(s):
                yield s

    def __iter__(self) -> Iterator[tuple[dict, tuple[int, ...]]]:
        """Yield (raw sample, sample id); `self.position` is the state after the sample."""
        pos = self.position
        skip = pos.emitted
        empty_epochs = 0
        while True:
            urls = self._chunk_urls(pos.epoch, pos.chunk)
            if urls is None:  # epoch over
                if pos.chunk == 0:
                    raise InputError(f"stream {self.index} has no shards (shards: {len(self.shards.urls)})")
                pos.epoch, pos.chunk, pos.emitted, skip = pos.epoch + 1, 0, 0, 0
                continue
            source = self._chunk_samples(urls)
            if self.sample_split:
                source = (s for j, s in enumerate(source) if j % self.n_streams == self.index)
            rng = random.Random(_rng_state(self.seed, self.index, pos.epoch, pos.chunk, 0xB0F))
            n = 0
            for sample in _shuffled(source, self.buffer, rng):
                n += 1
                if n <= skip:
                    continue
                pos.emitted = n
                yield sample, (self.seed, self.index, pos.epoch, pos.chunk, n)
            skip = 0
            if n == 0:
                empty_epochs += 1
                if empty_epochs > max(64, 4 * len(self.shards.urls)):
                    raise InputError(f"stream {self.index}: no usable samples in its shards "
                                     f"(split {self.shards.split!r}; missing images or captions?)")
            else:
                empty_epochs = 0
            pos.chunk, pos.emitted = pos.chunk + 1, 0


def _shuffled(source: Iterator[dict], size: int, rng: random.Random) -> Iterator[dict]:
    buf: list[dict] = []
    for s in source:
        if len(buf) < size:
            buf.append(s)
            continue
        j = rng.randrange(size)
        buf[j], s = s, buf[j]
        yield s
    rng.shuffle(buf)
    yield from buf


# ----- decoding ---------------------------------------------------------------------------------
def decode_image(data: bytes, size: int):
    """Decode to RGB; JPEGs are drafted (decoded at a reduced scale) when much larger than `size`."""
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    if img.format == "JPEG":
        img.draft("RGB", (2 * size, 2 * size))
    return img.convert("RGB")


def random_resized_crop(img, size: int, scale: tuple[float, float], rng: random.Random):
    """torchvision's RandomResizedCrop (ratio 3/4..4/3, 10 tries, centre fallback) in one PIL resize."""
    from PIL import Image

    w, h = img.size
    area = w * h
    box = None
    if scale != (1.0, 1.0):
        for _ in range(10):
            target = area * rng.uniform(*scale)
            aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
                box = (x, y, x + cw, y + ch)
                break
    if box is None:
        box = (0, 0, w, h)
    return img.resize((size, size), Image.Resampling.BICUBIC, box=box)


def _to_uint8(img) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def bio_caption(sample: dict, text_type: str) -> str:
    """The caption of a biology sample in a text type: its caption member, else rendered from the JSON."""
    member = f"{text_type}.txt"
    if member in sample:
        return sample[member].decode("utf-8").strip()
    if text_type in sample:  # a plain caption key such as `txt`
        return sample[text_type].decode("utf-8").strip()
    if text_type not in _RENDERED:
        raise InputError(f"sample {sample['__key__']} in {sample['__url__']} has no {text_type!r} caption")
    return render_caption(sample_taxon(sample), text_type)


def sample_taxon(sample: dict) -> Taxon:
    if "json" not in sample:
        raise InputError(f"sample {sample['__key__']} in {sample['__url__']} has no taxonomy (.json)")
    try:
        meta = json.loads(sample["json"])
        return Taxon.from_record(meta.get("taxonomy", meta) if isinstance(meta.get("taxonomy"), dict) else meta)
    except ValueError as e:
        raise InputError(f"sample {sample['__key__']} in {sample['__url__']}: bad taxonomy: {e}") from None


# ----- batches of streams -----------------------------------------------------------------------
@dataclass
class StreamSpec:
    """One kind of data in the batch (biology or replay)."""

    shards: ShardSet
    per_stream: int  # samples per stream per micro-batch
    captions: Callable[[dict, str], str]
    accept: Callable[[dict], bool]
    start: dict[int, list[int]] = field(default_factory=dict)  # stream -> Position list
    members: Callable[[str], bool] | None = None  # the tar members worth reading (and buffering)


_RENDERED = frozenset(TEXT_TYPES) | {"scientific_name", "taxonomic_name", "common_name"}


def accept_bio(split: str, types: Sequence[str]) -> Callable[[dict], bool]:
    needs_json = any(t in _RENDERED for t in types)

    def accept(s: dict) -> bool:
        if image_member(s) is None:
            return False
        if split and not in_split(s, split):
            return False
        has_caps = all(f"{t}.txt" in s or t in s for t in types)
        return has_caps or (needs_json and "json" in s)

    return accept


def _accept_caption(key: str) -> Callable[[dict], bool]:
    return lambda s: image_member(s) is not None and key in s


def _replay_caption(key: str) -> Callable[[dict, str], str]:
    return lambda s, _type: s[key].decode("utf-8", "replace").strip()


class BatchStreams(torch.utils.data.IterableDataset):
    """Yields, per micro-batch, this worker's slice: uint8 images and tokens for bio and replay.

    Process `rank` of `world` owns streams [rank*S/world, (rank+1)*S/world); DataLoader worker
    `w` of `n` owns a contiguous part of those. Items come out in micro-batch order, so a
    DataLoader's round-robin over workers returns them worker by worker.
    """

    def __init__(self, specs: dict[str, StreamSpec], *, n_streams: int, rank: int, world: int, seed: int,
                 text_types: Sequence[str], accum: int, image_size: int, crop_scale: tuple[float, float],
                 tokenizer, start_micro: int, buffer: int, chunk_shards: int, resample: bool):
        self.specs, self.n_streams, self.rank, self.world = specs, n_streams, rank, world
        self.seed, self.text_types, self.accum = seed, list(text_types), accum
        self.image_size, self.crop_scale, self.tokenizer = image_size, tuple(crop_scale), tokenizer
        self.start_micro, self.buffer, self.chunk_shards, self.resample = start_micro, buffer, chunk_shards, resample

    def streams_of(self, worker: int, workers: int) -> range:
        per_rank = self.n_streams // self.world
        per_worker = per_rank // workers
        first = self.rank * per_rank + worker * per_worker
        return range(first, first + per_worker)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if info is not None:
            torch.set_num_threads(1)  # decoding is per sample; leave the cores to the model
        readers: dict[str, list[tuple[int, Iterator, StreamReader]]] = {}
        for name, spec in self.specs.items():
            if spec.per_stream <= 0:
                continue
            readers[name] = []
            for s in self.streams_of(worker, workers):
                r = StreamReader(spec.shards, s, self.n_streams, seed=self.seed + (0 if name == "bio" else 7919),
                                 buffer=self.buffer, chunk_shards=self.chunk_shards, resample=self.resample,
                                 accept=spec.accept, start=Position.from_list(spec.start.get(s)),
                                 members=spec.members)
                readers[name].append((s, iter(r), r))
        micro = self.start_micro
        while True:
            step = micro // self.accum
            text_type = text_type_for_step(self.seed, step, self.text_types)
            item = {"micro": micro, "text_type": text_type, "positions": {}}
            for name, spec in self.specs.items():
                if spec.per_stream <= 0:
                    continue
                images, texts, pos = [], [], {}
                for s, it, reader in readers[name]:
                    got = 0
                    while got < spec.per_stream:
                        sample, sid = next(it)
                        try:  # a bad sample is skipped (deterministically: it is bad every time)
                            texts.append(spec.captions(sample, text_type))
                            images.append(self._image(sample, sid))
                        except InputError as e:
                            del texts[len(images):]
                            log.warning("skipping a sample: %s", e)
                            continue
                        got += 1
                    pos[s] = reader.position.as_list()
                item[name] = (torch.stack(images), self.tokenizer(texts))
                item["positions"][name] = pos
            yield item
            micro += 1

    def _image(self, sample: dict, sid: tuple[int, ...]) -> torch.Tensor:
        data = sample[image_member(sample)]
        try:
            img = decode_image(data, self.image_size)
        except Exception as e:  # PIL raises many types for bad files
            raise InputError(f"cannot decode image {sample['__key__']} in {sample['__url__']}: {e}") from None
        rng = random.Random(_rng_state(*sid, 0xC0))
        return _to_uint8(random_resized_crop(img, self.image_size, self.crop_scale, rng))


@dataclass
class Batch:
    micro: int
    text_type: str
    images: torch.Tensor  # uint8 [B, 3, H, W]
    texts: torch.Tensor
    replay_images: torch.Tensor | None
    replay_texts: torch.Tensor | None
    positions: dict[str, dict[int, list[int]]]


def _worker_init(parent: int | None, _worker_id: int) -> None:
    die_with_parent(parent)  # at once when training is killed, not at torch's next 5 s check


def _forking_parent() -> int | None:
    """This pid when DataLoader workers will be forked from it (the default start method), else None."""
    import multiprocessing

    return os.getpid() if multiprocessing.get_start_method() == "fork" else None


class Loader:
    """The process's micro-batches in order: workers' slices concatenated in stream order."""

    def __init__(self, dataset: BatchStreams, workers: int, prefetch: int = 2, pin_memory: bool = False):
        self.dataset, self.workers = dataset, workers
        self._loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, num_workers=workers, prefetch_factor=prefetch if workers else None,
            persistent_workers=False, pin_memory=pin_memory,
            worker_init_fn=functools.partial(_worker_init, _forking_parent()) if workers else None)
        self._it = None

    def __iter__(self) -> Iterator[Batch]:
        if self.workers:
            import gc

            gc.freeze()  # objects made so far stay untouched by the workers' GC: fewer copied pages
        it = iter(self._loader)
        n = max(1, self.workers)
        while True:
            parts = [next(it) for _ in range(n)]
            micro = parts[0]["micro"]
            if any(p["micro"] != micro for p in parts):
                raise RuntimeError(f"data workers out of step: {[p['micro'] for p in parts]}")
            pos: dict[str, dict[int, list[int]]] = {}
            for p in parts:
                for name, d in p["positions"].items():
                    pos.setdefault(name, {}).update(d)
            cat = lambda name, i: torch.cat([p[name][i] for p in parts]) if name in parts[0] else None
            yield Batch(micro, parts[0]["text_type"], cat("bio", 0), cat("bio", 1),
                        cat("replay", 0), cat("replay", 1), pos)


def make_loader(cfg, *, rank: int, world: int, tokenizer, image_size: int, start_micro: int,
                start_positions: dict[str, dict] | None, pin_memory: bool = False,
                shards: ShardSet | None = None) -> Loader:
    """Build this process's loader from a `TrainConfig`, checking that the batch sizes divide."""
    from .config import ConfigError

    d = cfg.data
    workers = max(0, d.workers)
    n_streams = d.streams or world * max(workers, 1)
    if n_streams % (world * max(workers, 1)):
        raise ConfigError(f"data.streams={n_streams} must be a multiple of processes x workers "
                          f"({world} x {max(workers, 1)})")
    per_rank = n_streams // world
    for name, b in (("data.batch_size", d.batch_size), ("data.replay_batch_size", d.replay_batch_size)):
        if b % per_rank:
            raise ConfigError(f"{name}={b} must be a multiple of the streams per process ({per_rank}: "
                              f"data.streams={n_streams} over {world} processes)")
    start_positions = start_positions or {}
    bio_shards = shards or find_shards(d.train, d.split)
    bio_members = frozenset(IMAGE_EXTS) | {"json"} | {f"{t}.txt" for t in d.text_types} | set(d.text_types)
    specs = {"bio": StreamSpec(bio_shards, d.batch_size // per_rank, bio_caption,
                               accept_bio(d.split, d.text_types),
                               {int(k): v for k, v in start_positions.get("bio", {}).items()},
                               bio_members.__contains__)}
    if d.replay_batch_size:
        replay_members = frozenset(IMAGE_EXTS) | {d.replay_caption_key}
        specs["replay"] = StreamSpec(find_shards(d.replay), d.replay_batch_size // per_rank,
                                     _replay_caption(d.replay_caption_key), _accept_caption(d.replay_caption_key),
                                     {int(k): v for k, v in start_positions.get("replay", {}).items()},
                                     replay_members.__contains__)
    ds = BatchStreams(specs, n_streams=n_streams, rank=rank, world=world, seed=cfg.seed, text_types=d.text_types,
                      accum=cfg.optim.accum, image_size=image_size, crop_scale=d.crop_scale, tokenizer=tokenizer,
                      start_micro=start_micro, buffer=d.shuffle_buffer, chunk_shards=d.chunk_shards,
                      resample=d.resample)
    return Loader(ds, workers, d.prefetch, pin_memory)


def normalize_images(x: torch.Tensor, mean, std, dtype: torch.dtype, device) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> normalised `dtype` on `device` (done once per batch, after transfer)."""
    x = x.to(device, non_blocking=True).float().div_(255.0)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return x.sub_(m).div_(s).to(dtype)

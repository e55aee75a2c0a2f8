"""Finding images in what users type, and decoding them in parallel: paths, globs, folders,
list files, tar shards and PIL images.

`find_images` turns whatever a user typed into `ImageRef`s (plus one line per input that
held no images); `ImageLoader` decodes (`decode.py`) and preprocesses them in worker
processes while the model runs, under one decode memory budget the workers share
(`budget.py`), and reports a file it cannot read as an error row instead of stopping.
`decode_image` is re-exported from `decode.py`.
"""
from __future__ import annotations

import csv
import functools
import glob
import io
import os
import tarfile
from dataclasses import dataclass
from typing import IO, Iterable, Iterator, Sequence

from PIL import Image

from ..errors import InputError
from ..orphans import die_with_parent
from .budget import DecodeBudget, default_budget, parse_bytes
from .decode import decode_bounded, decode_image

__all__ = ["IMAGE_EXTENSIONS", "ImageRef", "decode_image", "find_images", "ImageLoader", "Batch", "load_batch"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif",
                              ".jfif", ".ppm", ".pgm", ".pbm", ".pnm"})
LIST_EXTENSIONS = frozenset({".txt", ".csv", ".tsv", ".lst"})


@dataclass(frozen=True)
class ImageRef:
    """One image to read: a file, a member of a tar shard, raw bytes or an in-memory image.

    `name` is what results report as `file_name` (the path as given, `shard.tar/key.jpg`, or
    the position of an in-memory image).
    """

    name: str
    path: str | None = None
    offset: int = -1  # byte offset of a tar member's data; -1 for plain files
    size: int = -1
    data: bytes | None = None
    image: Image.Image | None = None

    def open(self) -> IO[bytes] | Image.Image:
        if self.image is not None:
            return self.image
        if self.data is not None:
            return io.BytesIO(self.data)
        if self.path is None:
            raise InputError(f"{self.name}: nothing to read")
        if self.offset >= 0:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                return io.BytesIO(f.read(self.size))
        return open(self.path, "rb")


# ----- finding images -------------------------------------------------------------------------
def _is_image(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def _walk_images(folder: str) -> tuple[list[str], int]:
    found, others = [], 0
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if f.startswith("."):
                continue
            if _is_image(f):
                found.append(os.path.join(root, f))
            else:
                others += 1
    return found, others


def _read_list(path: str) -> list[str]:
    """A text file with one path per line, or a CSV/TSV with a `filepath` column."""
    base = os.path.dirname(path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        text = f.read()
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    ext = os.path.splitext(path)[1].lower()
    if ext in (".csv", ".tsv") or "," in lines[0] or "\t" in lines[0]:
        dialect = "excel-tab" if ext == ".tsv" or "\t" in lines[0] else "excel"
        reader = csv.DictReader(lines, dialect=dialect)
        cols = {c.strip().lower(): c for c in reader.fieldnames or []}
        key = next((cols[c] for c in ("filepath", "file_path", "path", "file_name", "filename") if c in cols), None)
        if key is None:
            raise InputError(f"{path}: no 'filepath' column (columns: {', '.join(cols.values())})")
        entries = [(r.get(key) or "").strip() for r in reader]  # a short row has None for missing cells
        entries = [e for e in entries if e]
    else:
        entries = [line.strip() for line in lines]
    return [e if os.path.isabs(e) or os.path.exists(e) else os.path.join(base, e) for e in entries]


def _tar_members(path: str) -> list[ImageRef]:
    refs = []
    with tarfile.open(path, "r:") as tar:
        for m in tar:
            if m.isfile() and _is_image(m.name):
                refs.append(ImageRef(f"{path}/{m.name}", path=path, offset=m.offset_data, size=m.size))
    return refs


def find_images(inputs: Iterable[str | os.PathLike | Image.Image]) -> tuple[list[ImageRef], list[str]]:
    """Expand inputs into image references, in a stable order.

    Accepts image paths (kept even if missing or unreadable: they become error rows), globs,
    folders (recursive, common extensions in any case, hidden entries skipped), list files
    (`.txt` one path per line, `.csv` with a `filepath` column), uncompressed tar shards
    (webdataset) and PIL images. Returns (refs, problems): one message per input that
    yielded no image at all (an empty folder, a folder of non-images, a bad list file).
    """
    refs: list[ImageRef] = []
    problems: list[str] = []
    n_pil = 0
    for item in inputs:
        if isinstance(item, Image.Image):
            refs.append(ImageRef(str(n_pil), image=item))
            n_pil += 1
            continue
        if isinstance(item, ImageRef):  # already found (an evaluation set's members)
            refs.append(item)
            continue
        text = os.fspath(item)
        path = os.path.expanduser(text)
        if os.path.isdir(path):
            found, others = _walk_images(path)
            if not found:
                what = f"{others} files, none with an image extension" if others else "no files"
                problems.append(f"{text}: no images in folder ({what})")
            refs.extend(ImageRef(p, path=p) for p in found)
        elif os.path.isfile(path) and path.lower().endswith(".tar"):
            try:
                members = _tar_members(path)
            except (tarfile.TarError, OSError) as e:
                problems.append(f"{text}: cannot read tar shard ({e})")
                continue
            if not members:
                problems.append(f"{text}: no images in tar shard")
            refs.extend(members)
        elif os.path.isfile(path) and os.path.splitext(path)[1].lower() in LIST_EXTENSIONS:
            try:
                listed = _read_list(path)
            except (OSError, UnicodeDecodeError, csv.Error) as e:
                problems.append(f"{text}: cannot read image list ({e})")
                continue
            except InputError as e:
                problems.append(str(e))
                continue
            if not listed:
                problems.append(f"{text}: image list is empty")
            refs.extend(ImageRef(p, path=p) for p in listed)
        elif not os.path.exists(path) and glob.has_magic(text):
            matches = sorted(glob.glob(path, recursive=True))
            files = [m for m in matches if os.path.isfile(m) and _is_image(m)]
            if not files:
                problems.append(f"{text}: pattern matches no images")
            refs.extend(ImageRef(p, path=p) for p in files)
        else:
            refs.append(ImageRef(text, path=path))  # a photo, or an error row if it is not one
    return refs, problems


# ----- parallel loading ---------------------------------------------------------------------
@dataclass
class Batch:
    """Preprocessed pixels of the readable images of a batch, and errors for the others."""

    refs: list[ImageRef]
    pixels: "torch.Tensor"  # noqa: F821  [n_ok, 3, H, W] (a numpy array from `load_batch(arrays=True)`)
    ok: list[int]  # positions in `refs` of the rows of `pixels`
    errors: dict[int, str]


class _Decoded:
    """Map-style dataset: ref -> (position, tensor or None, error message).

    Decoding is `decode_bounded` under `budget` (shared by all workers, set by the loader):
    giant images are reduced to a few times the model's input right after decoding, and one
    that could never fit the budget becomes an error row that says so.
    """

    def __init__(self, refs: Sequence[ImageRef], preprocess, draft: bool, arrays: bool = False):
        self.refs, self.draft = refs, draft
        self.preprocess = preprocess.array if arrays else preprocess
        self.size: int | None = getattr(preprocess, "size", None)
        self.budget: DecodeBudget | None = None

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int):
        ref = self.refs[i]
        try:
            src = ref.open()
        except FileNotFoundError:
            return i, None, "file not found"
        except OSError as e:
            return i, None, f"cannot read file ({e.strerror or e})"
        try:
            return i, decode_bounded(src, self.size, budget=self.budget, draft=self.draft,
                                     preprocess=self.preprocess), None
        except InputError as e:
            return i, None, e.reason
        finally:
            if not isinstance(src, Image.Image):
                src.close()


def _collate(items, arrays: bool = False):
    ok = [(i, x) for i, x, _ in items if x is not None]
    if arrays:
        import numpy as np

        pixels = np.stack([x for _, x in ok]) if ok else np.empty((0,), dtype=np.float32)
    else:
        import torch

        pixels = torch.stack([x for _, x in ok]) if ok else torch.empty(0)
    return [i for i, _ in ok], pixels, {i: err for i, _, err in items if err is not None}


def load_batch(refs: Sequence[ImageRef], preprocess, *, draft: bool = True,
               budget: DecodeBudget | None = None, arrays: bool = False) -> Batch:
    """Decode and preprocess `refs` here, in this process: what one `ImageLoader` worker does
    for one batch (engines that schedule decoding themselves, e.g. on Ray, call this).
    `arrays`: the pixels as a numpy array, made without importing torch (an `ImagePreprocess`)."""
    refs = list(refs)
    dataset = _Decoded(refs, preprocess, draft, arrays)
    dataset.budget = budget
    ok, pixels, errors = _collate([dataset[i] for i in range(len(refs))], arrays)
    return Batch(refs, pixels, ok, errors)


def _worker_init(parent: int, _worker_id: int) -> None:
    import torch

    die_with_parent(parent)  # at once when predict is killed, not at torch's next 5 s check
    torch.set_num_threads(1)


class ImageLoader:
    """Iterate over `Batch`es; decoding runs in `workers` processes ahead of the consumer.

    Call `start()` early (before loading a model) so workers fork from a small process and
    the first batches are ready when the model is. `max_decode_memory` (bytes, or text such as
    "4GB") bounds the memory the workers together spend on decoding big images (see `budget`).
    """

    def __init__(self, refs: Sequence[ImageRef], preprocess, *, batch_size: int = 32, workers: int | None = None,
                 draft: bool = True, max_decode_memory: int | str | None = None):
        self.refs = list(refs)
        self.batch_size = max(1, int(batch_size))
        in_memory = any(r.image is not None for r in self.refs)
        self.workers = 0 if in_memory or len(self.refs) <= self.batch_size // 2 else (
            default_workers() if workers is None else max(0, int(workers)))
        # Bytes all workers together may spend decoding big images (default: half of what is available now).
        self.max_decode_memory = default_budget() if max_decode_memory is None else parse_bytes(max_decode_memory)
        self._dataset = _Decoded(self.refs, preprocess, draft)
        self._iter: Iterator | None = None

    def start(self) -> "ImageLoader":
        if self._iter is None:
            from torch.utils.data import DataLoader

            # Made before the workers fork, so they share it; a fresh one per pass, so nothing a
            # stopped worker still held carries over.
            self._dataset.budget = DecodeBudget(self.max_decode_memory)
            loader = DataLoader(self._dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.workers,
                                collate_fn=_collate,
                                worker_init_fn=functools.partial(_worker_init, os.getpid()) if self.workers else None,
                                prefetch_factor=2 if self.workers else None,
                                multiprocessing_context="fork" if self.workers and os.name == "posix" else None)
            self._iter = iter(loader)
        return self

    def __len__(self) -> int:
        return (len(self.refs) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[Batch]:
        self.start()
        start = 0
        for ok, pixels, errors in self._iter:
            n = min(self.batch_size, len(self.refs) - start)
            refs = self.refs[start:start + n]
            yield Batch(refs, pixels, [i - start for i in ok], {i - start: e for i, e in errors.items()})
            start += n
        self._iter = None


def default_workers(accelerator: bool = False) -> int:
    """Decoding processes: one per spare core, at least one; at most four when the model runs
    on the CPU (it needs the cores, and decoding is ~1% of its time), at most 32 when a GPU
    runs it (one core decodes ~300 photos/s, a GPU classifies thousands)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(32 if accelerator else 4, n - 1))

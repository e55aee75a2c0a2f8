"""Finding images and decoding them: paths, globs, folders, list files, tar shards and PIL images.

`find_images` turns whatever a user typed into `ImageRef`s (plus one line per input that
held no images); `decode_image` turns any image file into upright 8-bit RGB; `ImageLoader`
decodes and preprocesses in worker processes while the model runs, and reports a file it
cannot read as an error instead of stopping. Giant images (herbarium sheets, panoramas) are
decoded within a memory budget the workers share (`budget.py`) and reduced to a few times the
model's input as soon as they are decoded.
"""
from __future__ import annotations

import csv
import glob
import io
import os
import struct
import sys
import tarfile
import zlib
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import IO, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError
from .budget import RESERVE_MIN_BYTES, DecodeBudget, OverBudget, default_budget, format_bytes, parse_bytes

__all__ = ["IMAGE_EXTENSIONS", "ImageRef", "decode_image", "find_images", "ImageLoader", "Batch"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif",
                              ".jfif", ".ppm", ".pgm", ".pbm", ".pnm"})
LIST_EXTENSIONS = frozenset({".txt", ".csv", ".tsv", ".lst"})
Image.MAX_IMAGE_PIXELS = 30_000 ** 2  # large herbarium sheets and panoramas are real inputs


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


def decode_image(src: str | os.PathLike | bytes | IO[bytes] | Image.Image, *,
                 draft: tuple[int, int] | None = None) -> Image.Image:
    """Any image -> upright 8-bit RGB.

    EXIF orientation is applied; greyscale, palette, CMYK and alpha images are converted as
    the BioCLIP training pipeline did (`convert("RGB")`); 16-bit and float images are scaled to
    8 bits rather than clipped. `draft` lets JPEG decoding skip resolution we would throw away
    (only when the image is at least twice the requested size). Raises `InputError` naming
    the source for anything unreadable (missing, empty, truncated, not an image); its
    `reason` attribute holds the cause alone.
    """
    try:
        return _decode(src, draft)
    except _Unreadable as e:
        err = InputError(f"{_describe(src)}: {e}")
        err.reason = str(e)
        raise err from None


class _Unreadable(Exception):
    pass


@contextmanager
def _reasons() -> Iterator[None]:
    """Turn whatever opening or decoding raises into `_Unreadable` with a reason people read."""
    try:
        yield
    except FileNotFoundError:
        raise _Unreadable("file not found") from None
    except IsADirectoryError:
        raise _Unreadable("is a directory") from None
    except PermissionError:
        raise _Unreadable("permission denied") from None
    except UnidentifiedImageError:
        raise _Unreadable("not an image (or a format Pillow cannot read)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise _Unreadable(f"cannot decode image ({e})") from None


def _decode(src, draft) -> Image.Image:
    with _reasons():
        if isinstance(src, Image.Image):
            return _to_rgb(ImageOps.exif_transpose(src))  # a copy: never change the caller's image
        return _finish(_open(src, draft))


def _open(src, draft) -> Image.Image:
    """The image's header only (`Image.open` is lazy): size and mode, nothing decoded yet."""
    if isinstance(src, (str, os.PathLike)) and os.path.isfile(src) and os.path.getsize(src) == 0:
        raise _Unreadable("empty file")
    fp = io.BytesIO(src) if isinstance(src, (bytes, bytearray, memoryview)) else src
    img = Image.open(fp)
    if draft and _is_jpeg(img) and min(img.size[0] / draft[0], img.size[1] / draft[1]) >= 2:
        img.draft("RGB", draft)
    return img


def _finish(img: Image.Image, plan: "_Plan | None" = None) -> Image.Image:
    """Decode `img` (opened by `_open`) to upright RGB, reduced `plan.factor` times on each side."""
    if plan is None or plan.factor <= 1:
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # ours alone: no full-size copy
        return _to_rgb(img)
    w, h = img.size
    if plan.png is not None:  # band by band: the full image never exists
        found: dict = {}
        rawmode, bpp = plan.png
        rows = max(1, _PNG_BAND_BYTES // ((1 + w * bpp) * plan.factor)) * plan.factor
        small = _reduce_strips(_png_bands(img, rawmode, bpp, rows, found), w, h, plan.factor,
                               65535.0 if img.mode == "I;16" else None)
        orientation = _orientation(found.get("exif") or img.info.get("exif"))
    else:
        img.load()
        if img.mode == "RGB":
            small = img.reduce(plan.factor)
        else:  # converted strip by strip, never as a full-size copy
            hi = None
            if img.mode in _HIGH_BIT_DEPTH:  # one scale for the whole image, as `_to_rgb` picks it
                hi = 65535.0 if img.mode.startswith("I;16") or img.getextrema()[1] > 255 else 255.0
            rows = max(1, _STRIP_BYTES // ((4 + _conversion_bytes_per_pixel(img.mode)) * w * plan.factor)) * plan.factor
            small = _reduce_strips(((img.crop((0, y, w, min(h, y + rows))), None) for y in range(0, h, rows)),
                                   w, h, plan.factor, hi)
        orientation = img.getexif().get(0x0112, 1)
    method = _TRANSPOSE.get(orientation)
    return small.transpose(method) if method is not None else small


def _orientation(exif: bytes | None) -> int:
    if not exif:
        return 1
    try:
        e = Image.Exif()
        e.load(exif)
        return int(e.get(0x0112, 1))
    except Exception:  # a malformed EXIF block only loses the rotation
        return 1


def _is_jpeg(img: Image.Image) -> bool:
    return img.format in ("JPEG", "MPO")


def _to_rgb(img: Image.Image, hi: float | None = None) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in _HIGH_BIT_DEPTH:
        a = np.asarray(img, dtype=np.float64)
        if hi is None:
            hi = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


_HIGH_BIT_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}  # EXIF orientation -> the transpose that makes it upright


# ----- giant images ------------------------------------------------------------------------------
# An image of more than SHRINK_MIN_PIXELS (or one whose full-size path would not fit the decode
# budget) is reduced right after decoding, with a box filter, to no less than SHRINK_MARGIN times
# the model's input on each side, and only that small copy is converted and preprocessed. JPEGs
# are decoded at reduced size in the first place (draft mode). Smaller images take the path they
# always took, so fp32 runs stay faithful to pybioclip on every photo a camera makes.
SHRINK_MIN_PIXELS = 50_000_000
SHRINK_MARGIN = 4
_STRIP_BYTES = 16 * 2**20  # non-RGB images are converted strip by strip, never as a full-size copy
_SLACK_BYTES = 32 * 2**20  # decoder buffers, the reduced copy and the preprocessed tensor


def _bytes_per_pixel(mode: str) -> int:
    """How many bytes Pillow stores per pixel: 1 for L/P/1, 2 for 16-bit greyscale, else 4 (RGB too)."""
    return 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4


def _conversion_bytes_per_pixel(mode: str) -> int:
    """Full-size copies made on the way to RGB: none for RGB, an RGB copy, or the float64 rescaling."""
    return 0 if mode == "RGB" else 25 if mode in _HIGH_BIT_DEPTH else 4


def _preprocess_bytes_per_pixel(preprocess) -> int:
    """Peak bytes per input pixel that `preprocess` adds (measured, see docs/reliability.md):
    PIL resizing needs only small intermediates; resizing a float tensor (pybioclip's squash +
    bilinear) holds an RGB copy, its uint8 array and a float32 tensor of the full image."""
    from ..models.preprocess import ImagePreprocess

    if isinstance(preprocess, ImagePreprocess):
        return 15 if preprocess.resize_mode == "squash" and preprocess.interpolation == "bilinear" else 1
    return 16  # an unknown transform: assume torchvision-style to_tensor on the full image


def _reduce_factor(w: int, h: int, size: int) -> int:
    return max(1, min(w, h) // (SHRINK_MARGIN * size))


def _reduce_strips(strips: Iterable[tuple[Image.Image, tuple | None]], w: int, h: int, factor: int,
                   hi: float | None) -> Image.Image:
    """Stack `_to_rgb(strip).reduce(factor, box)` of horizontal strips (each a multiple of
    `factor` rows high but the last) into the reduced image."""
    out = Image.new("RGB", (-(-w // factor), -(-h // factor)))
    y = 0
    for strip, box in strips:
        small = _to_rgb(strip, hi).reduce(factor, box)
        out.paste(small, (0, y))
        y += small.height
    return out


# PNG band by band. Pillow decodes a PNG only whole, and a 300 MP RGB PNG is 1.2 GB decoded. So we
# read the chunks ourselves, inflate the image data a band of rows at a time, and let Pillow's own
# PNG decoder ("zip") unfilter and unpack each band: its data are re-wrapped as stored (uncompressed)
# deflate blocks, preceded by the previous band's last row, unfiltered, as a filter-0 row, which is
# all the context PNG's row filters need. Results are identical to a full decode (tested); layouts
# where the unfiltered row cannot be recovered exactly (16-bit colour, < 8 bits), interlaced and
# animated PNGs take the full decode under the budget instead.
_PNG_STREAMABLE = {(8, 0): ("L", "L", 1), (8, 2): ("RGB", "RGB", 3), (8, 3): ("P", "P", 1),
                   (8, 4): ("LA", "LA", 2), (8, 6): ("RGBA", "RGBA", 4), (16, 0): ("I;16", "I;16B", 2)}
_PNG_BAND_BYTES = 8 * 2**20


def _png_layout(img: Image.Image) -> tuple[str, int] | None:
    """(rawmode, bytes per pixel) of a PNG that `_png_bands` can decode, else None."""
    if img.format != "PNG" or img.info.get("interlace") or getattr(img, "is_animated", False):
        return None
    if not (hasattr(Image, "_getdecoder") and hasattr(Image.core, "new") and hasattr(img, "_new")):
        return None  # Pillow's internals moved: decode whole, under the budget
    try:
        pos = img.fp.tell()
        img.fp.seek(0)
        head = img.fp.read(33)
        img.fp.seek(pos)
    except (AttributeError, OSError, ValueError):
        return None
    if len(head) < 33 or head[12:16] != b"IHDR":
        return None
    w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", head[16:29])
    entry = _PNG_STREAMABLE.get((depth, colour))
    if entry is None or interlace or entry[0] != img.mode or (w, h) != img.size:
        return None
    return entry[1], entry[2]


def _png_bands(img: Image.Image, rawmode: str, bpp: int, rows: int,
               found: dict) -> Iterator[tuple[Image.Image, tuple[int, int, int, int]]]:
    """Decode `img` (a PNG `_png_layout` accepts) `rows` rows at a time: yields (band, box of its
    new rows). An eXIf chunk met on the way goes to `found["exif"]`."""
    w, h = img.size
    stride = 1 + w * bpp
    chunks = _png_idat(img.fp, found)
    inflate = zlib.decompressobj()
    data, prefix, y = b"", b"", 0
    while y < h:
        n = min(rows, h - y)
        band = _StoredZlib(len(prefix) + n * stride)
        band.write(prefix)
        while band.missing:
            if not data:
                data = next(chunks, None)
                if data is None:
                    raise OSError("image file is truncated")
            try:
                band.write(inflate.decompress(data, band.missing))
            except zlib.error:
                raise OSError("broken data stream when reading image file") from None
            data = inflate.unconsumed_tail
        im = _png_band(img, rawmode, w, band.buf, len(prefix) // stride + n)
        yield im, (0, 1 if prefix else 0, w, im.height)
        prefix = b"\x00" + im.crop((0, im.height - 1, w, im.height)).tobytes("raw", rawmode)
        y += n
    for _ in chunks:  # on to IEND: an eXIf chunk may follow the image data
        pass


def _png_idat(fp, found: dict) -> Iterator[bytes]:
    """The compressed image data of a PNG, in pieces of at most 1 MB; eXIf goes to `found`."""
    fp.seek(8)
    while True:
        head = fp.read(8)
        if len(head) < 8:
            return
        length, kind = struct.unpack(">I4s", head)
        if kind == b"IEND":
            return
        if kind == b"eXIf":
            found["exif"] = fp.read(length)
            fp.seek(4, 1)
            continue
        if kind != b"IDAT":
            fp.seek(length + 4, 1)
            continue
        left = length
        while left:
            piece = fp.read(min(left, 1 << 20))
            if not piece:
                return
            left -= len(piece)
            yield piece
        fp.seek(4, 1)  # CRC


class _StoredZlib:
    """A zlib stream of `size` bytes as non-final stored deflate blocks, filled by `write`: the
    inflated rows are copied once, straight into the form Pillow's decoder reads. No checksum
    or final block: the decoder stops when its rows are full."""

    BLOCK = 65535

    def __init__(self, size: int):
        blocks = -(-size // self.BLOCK)
        self.buf = bytearray(2 + size + 5 * blocks)
        self.buf[:2] = b"\x78\x01"
        for k in range(blocks):
            n = min(self.BLOCK, size - k * self.BLOCK)
            pos = 2 + k * (self.BLOCK + 5)
            self.buf[pos:pos + 5] = struct.pack("<BHH", 0, n, n ^ 0xFFFF)
        self.size, self.filled = size, 0

    @property
    def missing(self) -> int:
        return self.size - self.filled

    def write(self, data: bytes) -> None:
        view, i = memoryview(data), 0
        while i < len(view):
            k, r = divmod(self.filled, self.BLOCK)
            take = min(self.BLOCK - r, len(view) - i)
            pos = 2 + k * (self.BLOCK + 5) + 5 + r
            self.buf[pos:pos + take] = view[i:i + take]
            i += take
            self.filled += take


def _png_band(img: Image.Image, rawmode: str, w: int, stream: bytearray, height: int) -> Image.Image:
    """Unfilter and unpack `height` rows of PNG scanlines (a zlib stream) with Pillow's own decoder."""
    core = Image.core.new(img.mode, (w, height))
    decoder = Image._getdecoder(img.mode, "zip", rawmode)
    try:
        decoder.setimage(core, (0, 0, w, height))
        consumed, err = decoder.decode(stream)
    finally:
        decoder.cleanup()
    if consumed != -1 or err < 0:
        raise OSError(f"broken data stream when reading image file (decoder error {err})")
    return img._new(core)  # keeps the palette of P images


@dataclass(frozen=True)
class _Plan:
    factor: int  # reduce this many times right after decoding (1: keep the full size)
    need: int  # estimated peak bytes of decoding + preprocessing
    png: tuple[str, int] | None = None  # (rawmode, bytes per pixel): decode this PNG band by band


def _plan(img: Image.Image, size: int | None, pre_bpp: int, limit: float) -> _Plan:
    """How to decode `img` (header read only) for a model input of `size`, within `limit` bytes.

    May switch a big JPEG to draft mode. Raises `OverBudget` when even the frugal path needs
    more than `limit`.
    """
    w, h = img.size
    full = w * h * (_bytes_per_pixel(img.mode) + _conversion_bytes_per_pixel(img.mode) + pre_bpp) + _SLACK_BYTES
    if full <= RESERVE_MIN_BYTES or size is None:
        return _Plan(1, full)
    big = w * h > SHRINK_MIN_PIXELS or full > limit
    if big and _is_jpeg(img) and _reduce_factor(w, h, size) >= 2:
        img.draft("RGB", (SHRINK_MARGIN * size, SHRINK_MARGIN * size))  # no-op if already drafted
        if img.size != (w, h):
            return _plan(img, size, pre_bpp, limit)
    factor = _reduce_factor(w, h, size)
    png = _png_layout(img) if big and factor > 1 else None
    if not big or factor == 1:
        plan = _Plan(1, full)
    elif png is not None:
        band_rows = max(1, _PNG_BAND_BYTES // ((1 + w * png[1]) * factor)) * factor
        plan = _Plan(factor, 4 * band_rows * (1 + w * png[1]) + 2 * band_rows * w * 4
                     + (w // factor + 1) * (h // factor + 1) * 4 + _SLACK_BYTES, png)
    else:
        plan = _Plan(factor, int(w * h * _bytes_per_pixel(img.mode) * 1.02) + _SLACK_BYTES
                     + (_STRIP_BYTES * 2 if img.mode != "RGB" else 0))
    if plan.need > limit:
        raise OverBudget(f"needs ~{format_bytes(plan.need)} to decode, more than the decode memory budget of "
                         f"{format_bytes(limit)}; raise --max-decode-memory")
    return plan


_libc_trim = None


def _return_freed_memory() -> None:
    """Give freed heap pages back to the OS (glibc keeps them after the first large free:
    without this, every worker that once decoded a giant image stays that big)."""
    global _libc_trim
    if _libc_trim is None:
        _libc_trim = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                _libc_trim = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):
                pass
    if _libc_trim:
        _libc_trim(0)


def _describe(src) -> str:
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, Image.Image):
        return "in-memory image"
    return getattr(src, "name", "image bytes")


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
        rows = list(csv.DictReader(lines, dialect=dialect))
        cols = {c.strip().lower(): c for c in (rows[0].keys() if rows else csv.DictReader(lines).fieldnames or [])}
        key = next((cols[c] for c in ("filepath", "file_path", "path", "file_name", "filename") if c in cols), None)
        if key is None:
            raise InputError(f"{path}: no 'filepath' column (columns: {', '.join(cols.values())})")
        entries = [r[key].strip() for r in rows if r.get(key, "").strip()]
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
    pixels: "torch.Tensor"  # noqa: F821  [n_ok, 3, H, W]
    ok: list[int]  # positions in `refs` of the rows of `pixels`
    errors: dict[int, str]


class _Decoded:
    """Map-style dataset: ref -> (position, tensor or None, error message).

    Images big enough to matter reserve their estimated bytes from `budget` (shared by all
    workers) while they are decoded; giant ones are reduced to a few times the model's input
    right after decoding; one that could never fit the budget becomes an error row.
    """

    def __init__(self, refs: Sequence[ImageRef], preprocess, draft: bool, budget: DecodeBudget | None = None):
        self.refs, self.preprocess, self.budget = refs, preprocess, budget
        self.size = getattr(preprocess, "size", None)
        self.draft = (self.size, self.size) if draft and self.size else None
        self.pre_bpp = _preprocess_bytes_per_pixel(preprocess)

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
            return i, self._pixels(src), None
        except (_Unreadable, OverBudget) as e:
            return i, None, str(e)
        finally:
            if not isinstance(src, Image.Image):
                src.close()

    def _pixels(self, src):
        if isinstance(src, Image.Image):
            return self.preprocess(_decode(src, None))
        with _reasons():
            img = _open(src, self.draft)
            plan = _plan(img, self.size, self.pre_bpp, self.budget.limit if self.budget else float("inf"))
        reserved = self.budget is not None and plan.need > RESERVE_MIN_BYTES
        with self.budget.reserve(plan.need) if reserved else nullcontext():
            with _reasons():
                rgb = _finish(img, plan)
            del img
            x = self.preprocess(rgb)
            del rgb
            if reserved:
                _return_freed_memory()  # before the bytes go back to the budget
        return x


def _collate(items):
    import torch

    ok = [(i, x) for i, x, _ in items if x is not None]
    pixels = torch.stack([x for _, x in ok]) if ok else torch.empty(0)
    return [i for i, _ in ok], pixels, {i: err for i, _, err in items if err is not None}


def _worker_init(_):
    import torch

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
                                collate_fn=_collate, worker_init_fn=_worker_init if self.workers else None,
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

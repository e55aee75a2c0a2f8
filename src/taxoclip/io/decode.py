"""Decoding any image into upright 8-bit RGB, and giant ones within a memory budget.

`decode_image` is the faithful decode: full size, EXIF orientation applied, every mode
converted as the BioCLIP training pipeline did. `decode_bounded` is what the loaders of
`predict`/`embed`, the server and the data builder use. Ordinary photos take exactly
`decode_image`'s path. An image over `SHRINK_MIN_PIXELS` (herbarium sheets, panoramas) is
reduced right after decoding to no less than `SHRINK_MARGIN` times the size the caller
needs: a JPEG by DCT scaling, a PNG band by band (`pngbands`), anything else decoded whole
while holding a reservation from a `DecodeBudget` shared by all decoding workers. An image
that could never fit the budget is refused with an error that says so.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
from dataclasses import dataclass
from typing import IO, Callable, Iterable, Iterator, Union

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from ..errors import InputError
from . import pngbands
from .budget import DecodeBudget, format_bytes

__all__ = ["Source", "decode_image", "decode_bounded", "TooBigToDecode", "SHRINK_MIN_PIXELS", "SHRINK_MARGIN", "RESERVE_MIN_BYTES"]

Source = Union[str, os.PathLike, bytes, IO[bytes], Image.Image]
Image.MAX_IMAGE_PIXELS = 30_000 ** 2  # large herbarium sheets and panoramas are real inputs

# Over this many pixels an image is reduced right after decoding (box filter, integer factor)
# to no less than SHRINK_MARGIN times the requested size on its shorter side. Below it, the
# path is the one it always was, so fp32 runs stay faithful to pybioclip on every photo a
# camera makes.
SHRINK_MIN_PIXELS = 50_000_000
SHRINK_MARGIN = 4
# An image whose estimated peak is below this decodes without a reservation (~50 MP of RGB as
# Pillow holds it): ordinary photos never touch the budget's lock.
RESERVE_MIN_BYTES = 200 * 2**20
_SLACK_BYTES = 32 * 2**20  # decoder buffers, the reduced copy and the preprocessed tensor
_STRIP_BYTES = 16 * 2**20  # a non-RGB image decoded whole is converted this much at a time
_BAND_BYTES = 8 * 2**20  # filtered PNG rows inflated at a time
_HIGH_BIT_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def decode_image(src: Source, *, draft: tuple[int, int] | None = None) -> Image.Image:
    """Any image -> upright 8-bit RGB, at full size.

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
        raise _input_error(src, e) from None


def decode_bounded(src: Source, size: int | None, *, budget: DecodeBudget | None = None, draft: bool = True,
                   preprocess: Callable[[Image.Image], object] | None = None):
    """Upright RGB for a use that needs `size` px on the shorter side, within `budget`.

    Ordinary photos come out exactly as `decode_image` makes them (JPEGs drafted to `size`
    when `draft`). Giant ones come out reduced to >= `SHRINK_MARGIN` x `size`. `preprocess`,
    when given, runs on the decoded image inside the reservation and its result is returned
    instead (the model's resize of a full-size image is part of the peak). Raises `InputError`
    naming the source when the image is unreadable or can never fit the budget.
    """
    try:
        return _decode_bounded(src, size, budget, draft, preprocess)
    except _Unreadable as e:
        raise _input_error(src, e) from None


class _Unreadable(Exception):
    """Why an image cannot be decoded, without naming it (loaders put it in the error column)."""


class _OverBudget(_Unreadable):
    pass


class TooBigToDecode(InputError):
    """An image whose decoding could never fit the decode memory budget (the server answers 413)."""


def _input_error(src, e: Exception) -> InputError:
    err = (TooBigToDecode if isinstance(e, _OverBudget) else InputError)(f"{_describe(src)}: {e}")
    err.reason = str(e)
    return err


@contextlib.contextmanager
def _reasons() -> Iterator[None]:
    """Whatever opening or decoding raises -> `_Unreadable` with a reason people read."""
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


def _decode(src: Source, draft: tuple[int, int] | None) -> Image.Image:
    with _reasons():
        if isinstance(src, Image.Image):
            return _to_rgb(ImageOps.exif_transpose(src))  # a copy: never change the caller's image
        with _opened(src) as fp:
            img = _open(fp, draft)
            return _finish(img, _Plan(), fp)


def _decode_bounded(src: Source, size: int | None, budget: DecodeBudget | None, draft: bool, preprocess):
    if isinstance(src, Image.Image):  # already decoded: nothing left to bound
        img = _decode(src, None)
        return preprocess(img) if preprocess else img
    with _opened(src) as fp:
        with _reasons():
            img = _open(fp, (size, size) if draft and size else None)
            plan = _plan(img, fp, size, _preprocess_bytes_per_pixel(preprocess),
                         budget.limit if budget is not None else float("inf"))
        reserved = budget is not None and plan.need > RESERVE_MIN_BYTES
        with budget.reserve(plan.need) if reserved else contextlib.nullcontext():
            with _reasons():
                rgb = _finish(img, plan, fp)
            del img
            out = preprocess(rgb) if preprocess else rgb
            del rgb
            if reserved:
                _return_freed_memory()  # before the bytes go back to the budget
    return out


@contextlib.contextmanager
def _opened(src) -> Iterator[IO[bytes]]:
    """A seekable binary file for `src` (a path is opened and closed here; a given file is not closed)."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        if not src:
            raise _Unreadable("empty file")
        yield io.BytesIO(src)
    elif isinstance(src, (str, os.PathLike)):
        if os.path.isfile(src) and os.path.getsize(src) == 0:
            raise _Unreadable("empty file")
        with _reasons(), open(src, "rb") as fp:
            yield fp
    else:
        if _is_empty(src):
            raise _Unreadable("empty file")
        yield src


def _is_empty(fp: IO[bytes]) -> bool:
    """Nothing left to read in a seekable file (a zero-byte photo, tar member or upload)."""
    try:
        pos = fp.tell()
        end = fp.seek(0, os.SEEK_END)
        fp.seek(pos)
    except (AttributeError, OSError, ValueError):
        return False
    return end == pos


def _open(fp: IO[bytes], draft: tuple[int, int] | None) -> Image.Image:
    """The image's header only (`Image.open` is lazy): size and mode, nothing decoded yet."""
    img = Image.open(fp)
    if draft and _is_jpeg(img) and min(img.size[0] / draft[0], img.size[1] / draft[1]) >= 2:
        img.draft("RGB", draft)
    return img


@dataclass(frozen=True)
class _Plan:
    factor: int = 1  # reduce this many times on each side right after decoding (1: keep the full size)
    need: int = 0  # estimated peak bytes of decoding (+ preprocessing at full size)
    bands: pngbands.Layout | None = None  # decode this PNG band by band


def _plan(img: Image.Image, fp: IO[bytes], size: int | None, pre_bpp: int, limit: float) -> _Plan:
    """How to decode `img` (header read only) for `size` px within `limit` bytes. May switch a
    big JPEG to DCT-scaled decoding. Raises `_Unreadable` when even the frugal path needs more."""
    w, h = img.size
    full = w * h * (_bytes_per_pixel(img.mode) + _conversion_bytes_per_pixel(img.mode) + pre_bpp) + _SLACK_BYTES
    factor = max(1, min(w, h) // (SHRINK_MARGIN * size)) if size else 1
    giant = full > RESERVE_MIN_BYTES and factor > 1 and (w * h > SHRINK_MIN_PIXELS or full > limit)
    if giant and _is_jpeg(img):
        img.draft("RGB", (SHRINK_MARGIN * size, SHRINK_MARGIN * size))  # no-op if already drafted
        if img.size != (w, h):
            return _plan(img, fp, size, pre_bpp, limit)
    lay = pngbands.layout(fp) if giant and img.format == "PNG" and not getattr(img, "is_animated", False) else None
    if not giant:
        plan = _Plan(1, full)
    elif lay is not None:
        rows = _band_rows(lay, factor)
        plan = _Plan(factor, 4 * rows * lay.stride + 8 * rows * w + 4 * (w // factor + 1) * (h // factor + 1)
                     + _SLACK_BYTES, lay)
    else:  # decoded whole, then reduced; a non-RGB image converted strip by strip
        plan = _Plan(factor, int(1.02 * w * h * _bytes_per_pixel(img.mode)) + _SLACK_BYTES
                     + (2 * _STRIP_BYTES if img.mode != "RGB" else 0))
    if plan.need > limit:
        raise _OverBudget(f"needs ~{format_bytes(plan.need)} to decode, more than the decode memory budget of "
                         f"{format_bytes(limit)}; raise --max-decode-memory")
    return plan


def _finish(img: Image.Image, plan: _Plan, fp: IO[bytes]) -> Image.Image:
    """Decode `img` (opened by `_open` from `fp`) to upright RGB, reduced `plan.factor` times."""
    if plan.factor == 1:
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # ours alone: no full-size copy
        return _to_rgb(img)
    w, h = img.size
    if plan.bands is not None:  # the full image never exists
        hi = 65535.0 if img.mode == "I;16" else None
        bands = pngbands.bands(fp, plan.bands, _band_rows(plan.bands, plan.factor), img.palette)
        small = _reduce_strips(bands, w, h, plan.factor, hi)
        exif = img.info.get("exif") or pngbands.exif_after_image_data(fp)
        orientation = _orientation(exif)
    else:
        img.load()
        if img.mode == "RGB":
            small = img.reduce(plan.factor)
        else:
            hi = None
            if img.mode in _HIGH_BIT_DEPTH:  # one scale for the whole image, as `_to_rgb` picks it
                hi = 65535.0 if img.mode.startswith("I;16") or img.getextrema()[1] > 255 else 255.0
            per_row = (4 + _conversion_bytes_per_pixel(img.mode)) * w * plan.factor
            rows = max(1, _STRIP_BYTES // per_row) * plan.factor
            strips = (img.crop((0, y, w, min(h, y + rows))) for y in range(0, h, rows))
            small = _reduce_strips(strips, w, h, plan.factor, hi)
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    return _upright(small, orientation)


def _band_rows(lay: pngbands.Layout, factor: int) -> int:
    return max(1, _BAND_BYTES // (lay.stride * factor)) * factor


def _reduce_strips(strips: Iterable[Image.Image], w: int, h: int, factor: int, hi: float | None) -> Image.Image:
    """Stack `_to_rgb(strip).reduce(factor)` of horizontal strips (each a multiple of `factor` rows
    high but the last) into the reduced image: only one strip is ever converted at a time."""
    out = Image.new("RGB", (-(-w // factor), -(-h // factor)))
    y = 0
    for strip in strips:
        small = _to_rgb(strip, hi).reduce(factor)
        out.paste(small, (0, y))
        y += small.height
    return out


def _orientation(exif: bytes | None) -> int:
    if not exif:
        return 1
    e = Image.Exif()
    e.load(exif)
    return int(e.get(ExifTags.Base.Orientation, 1))


def _upright(img: Image.Image, orientation: int) -> Image.Image:
    """`img` turned as EXIF `orientation` says, by the same code (`ImageOps`) as full-size images."""
    if orientation in (None, 1):
        return img
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    img.info["exif"] = exif.tobytes()
    ImageOps.exif_transpose(img, in_place=True)
    return img


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


def _bytes_per_pixel(mode: str) -> int:
    """Bytes Pillow stores per pixel: 1 for L/P/1, 2 for 16-bit greyscale, else 4 (RGB too)."""
    return 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4


def _conversion_bytes_per_pixel(mode: str) -> int:
    """Full-size copies made on the way to RGB: none for RGB, an RGB copy, or the float64 rescaling."""
    return 0 if mode == "RGB" else 25 if mode in _HIGH_BIT_DEPTH else 4


def _preprocess_bytes_per_pixel(preprocess) -> int:
    """Peak bytes per input pixel that `preprocess` adds (measured, see docs/reliability.md): PIL
    resizing needs only small intermediates; resizing a float tensor (pybioclip's squash +
    bilinear) holds an RGB copy, its uint8 array and a float32 tensor of the full image."""
    if preprocess is None:
        return 0
    from .preprocess import ImagePreprocess

    preprocess = getattr(preprocess, "__self__", preprocess)  # `ImagePreprocess.array` costs as its instance
    if isinstance(preprocess, ImagePreprocess):
        return 15 if preprocess.resize_mode == "squash" and preprocess.interpolation == "bilinear" else 1
    return 16  # an unknown transform: assume torchvision-style to_tensor of the full image


_malloc_trim = None


def _return_freed_memory() -> None:
    """Give freed heap pages back to the OS: glibc keeps them after a large free, and without
    this every worker that once decoded a giant image would stay that big."""
    global _malloc_trim
    if _malloc_trim is None:
        _malloc_trim = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):
                pass
    if _malloc_trim:
        _malloc_trim(0)


def _describe(src) -> str:
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, Image.Image):
        return "in-memory image"
    return getattr(src, "name", "image bytes")

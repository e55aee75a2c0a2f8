"""A PNG decoded a band of rows at a time, so that a 300-megapixel scan never exists whole.

Why: Pillow decodes a PNG only whole, and a 20000 x 15000 RGB PNG (1 MB on disk when it is
mostly background) is 1.2 GB decoded. Here the chunks are walked directly, the image data
are inflated a band of rows at a time, and each band is unfiltered and unpacked by Pillow's
own PNG row decoder ("zip", through the documented `Image.frombytes(..., decoder_name)`).
The decoder wants a zlib stream, so a band's rows are re-wrapped as stored (uncompressed)
deflate blocks, after the previous band's last row, unfiltered, as a filter-0 row: that row
is all the context PNG's row filters need. Bands are identical to the same rows of a full
decode (`tests/test_io.py`). Layouts where the unfiltered row is not the decoded pixels
(16-bit colour, which Pillow keeps at 8 bits; 1, 2 and 4 bits) and interlaced PNGs are not
accepted: `layout` returns None and the caller decodes them whole.
"""
from __future__ import annotations

import functools
import io
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from PIL import Image

__all__ = ["Layout", "layout", "bands", "exif_after_image_data", "supported"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# (bit depth, colour type) -> (Pillow mode, raw mode of a row, bytes per pixel)
_STREAMABLE = {(8, 0): ("L", "L", 1), (8, 2): ("RGB", "RGB", 3), (8, 3): ("P", "P", 1), (8, 4): ("LA", "LA", 2),
               (8, 6): ("RGBA", "RGBA", 4), (16, 0): ("I;16", "I;16B", 2)}
_PIECE = 1 << 20  # compressed bytes read at a time


@dataclass(frozen=True)
class Layout:
    width: int
    height: int
    mode: str
    rawmode: str
    bpp: int  # bytes per pixel of a decoded row

    @property
    def stride(self) -> int:  # bytes of a filtered row: the filter type, then the pixels
        return 1 + self.width * self.bpp


def layout(fp: BinaryIO) -> Layout | None:
    """The layout of the PNG in `fp` if `bands` can decode it, else None (`fp`'s position is kept)."""
    pos = fp.tell()
    try:
        fp.seek(0)
        head = fp.read(33)
    finally:
        fp.seek(pos)
    if len(head) < 33 or not head.startswith(_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", head[16:29])
    entry = _STREAMABLE.get((depth, colour))
    if entry is None or interlace or w == 0 or h == 0 or not supported():
        return None
    return Layout(w, h, *entry)


@functools.cache
def supported() -> bool:
    """Whether this Pillow's row decoder does what `bands` relies on, checked once per process:
    a small PNG decoded by `bands` two rows at a time (bands that start with Up and Paeth rows,
    which need the previous band's last row) must equal the pixels it was made of. If not,
    `layout` says no and giant PNGs are decoded whole, under the budget."""
    w, h = 16, 12
    pattern = (lambda x, y, c: (x * x * 7 + c * 50) % 256, lambda x, y, c: (x * 9 + y * 30 + c) % 256,
               lambda x, y, c: ((x * y * 11) ^ (c * 77)) % 256, lambda x, y, c: ((x + y) * 20 + c * 5) % 256)
    pixels = bytes(pattern[y // 3](x, y, c) for y in range(h) for x in range(w) for c in range(3))
    png = io.BytesIO()
    Image.frombytes("RGB", (w, h), pixels).save(png, "PNG")  # rows 2, 4 and 10 are Up or Paeth rows
    try:
        got = b"".join(b.tobytes() for b in bands(png, Layout(w, h, "RGB", "RGB", 3), 2))
        return got == pixels
    except Exception:  # any change in what the decoder accepts: decode whole instead
        return False


def bands(fp: BinaryIO, lay: Layout, rows: int, palette=None) -> Iterator[Image.Image]:
    """The image `rows` rows at a time (the last band may be shorter), in `lay.mode`; `palette`
    (the lazily opened image's `palette`) is given to the bands of a P image. Raises OSError
    for truncated or corrupt data, as Pillow does."""
    inflate = zlib.decompressobj()
    pieces = _image_data(fp)
    data, prefix, y = b"", b"", 0
    while y < lay.height:
        n = min(rows, lay.height - y)
        band = _StoredBlocks(len(prefix) + n * lay.stride)
        band.write(prefix)
        while band.missing:
            if not data:
                data = next(pieces, None)
                if data is None:
                    raise OSError("image file is truncated")
            try:
                band.write(inflate.decompress(data, band.missing))
            except zlib.error:
                raise OSError("broken data stream when reading image file") from None
            data = inflate.unconsumed_tail
        height = n + (1 if prefix else 0)
        try:
            im = Image.frombytes(lay.mode, (lay.width, height), band.buf, "zip", lay.rawmode)
        except ValueError as e:  # Pillow's words for a row it cannot unfilter
            raise OSError(f"broken data stream when reading image file ({e})") from None
        if palette is not None and lay.mode == "P":
            im.putpalette(palette)
        if prefix:
            im = im.crop((0, 1, lay.width, height))
        prefix = b"\x00" + im.crop((0, n - 1, lay.width, n)).tobytes("raw", lay.rawmode)
        y += n
        yield im


def exif_after_image_data(fp: BinaryIO) -> bytes | None:
    """An eXIf chunk that follows the image data (Pillow reads only the chunks before it when opening)."""
    for kind, length in _chunks(fp):
        if kind == b"eXIf":
            return fp.read(length)
        fp.seek(length + 4, 1)
    return None


def _chunks(fp: BinaryIO) -> Iterator[tuple[bytes, int]]:
    """(kind, length) of each chunk up to IEND, with `fp` at the chunk's data; the caller moves
    `fp` to the data's end + 4 (the CRC) before asking for the next."""
    fp.seek(len(_SIGNATURE))
    while True:
        head = fp.read(8)
        if len(head) < 8:
            return
        length, kind = struct.unpack(">I4s", head)
        if kind == b"IEND":
            return
        yield kind, length


def _image_data(fp: BinaryIO) -> Iterator[bytes]:
    """The compressed image data (all IDAT chunks in order), in pieces of at most `_PIECE` bytes."""
    for kind, length in _chunks(fp):
        if kind != b"IDAT":
            fp.seek(length + 4, 1)
            continue
        left = length
        while left:
            piece = fp.read(min(left, _PIECE))
            if not piece:
                return
            left -= len(piece)
            yield piece
        fp.seek(4, 1)


class _StoredBlocks:
    """A zlib stream of `size` bytes as non-final stored deflate blocks, filled by `write`: inflated
    rows are copied once, straight into the form the decoder reads. No final block or checksum:
    the decoder stops when its rows are full."""

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

"""What the server accepts as a photo: limits checked before any pixel is decoded.

An upload is recognised by its first bytes, never by its name or declared type (a zip renamed
`.jpg` is a zip); its pixel count is read from the header and refused above the limit before
decoding (a 200-megapixel PNG would take gigabytes); then it is decoded as `predict` decodes,
within the server's decode memory budget (`taxoclip.io.decode.decode_bounded`), which the
threads decoding concurrent uploads share.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from ..errors import InputError
from ..io.budget import DecodeBudget
from ..io.decode import TooBigToDecode, decode_bounded

__all__ = ["UploadLimits", "UploadRejected", "sniff_format", "decode_upload"]

# (format name, test on the first 16 bytes): the raster formats photos come in.
_SIGNATURES = (
    ("JPEG", lambda b: b[:3] == b"\xff\xd8\xff"),
    ("PNG", lambda b: b[:8] == b"\x89PNG\r\n\x1a\n"),
    ("WEBP", lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP"),
    ("GIF", lambda b: b[:6] in (b"GIF87a", b"GIF89a")),
    ("BMP", lambda b: b[:2] == b"BM"),
    ("TIFF", lambda b: b[:4] in (b"II*\x00", b"MM\x00*")),
)


class UploadRejected(InputError):
    """An upload refused by a limit; `status` is the HTTP status that says why."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 32 * 2**20  # per file
    max_request_bytes: int = 256 * 2**20  # the whole request body
    max_pixels: int = 50_000_000  # a 50-megapixel camera; decompression bombs are far larger
    max_files: int = 64
    max_decode_memory: int | None = None  # bytes concurrent decodes may spend together (default: half the free memory)


def sniff_format(data: bytes) -> str | None:
    """The image format the bytes start with, or None when they are not a photo format we read."""
    head = bytes(data[:16])
    return next((name for name, test in _SIGNATURES if test(head)), None)


def decode_upload(name: str, data: bytes, preprocess, limits: UploadLimits, draft: bool = True,
                  budget: DecodeBudget | None = None) -> torch.Tensor:
    """Bytes of one upload -> the model's input tensor [3, H, W]; UploadRejected naming the file otherwise."""
    if not data:
        raise UploadRejected(f"{name}: empty file")
    if len(data) > limits.max_bytes:
        raise UploadRejected(f"{name}: {len(data):,} bytes, over the limit of {limits.max_bytes:,}", 413)
    kind = sniff_format(data)
    if kind is None:
        raise UploadRejected(f"{name}: not a JPEG, PNG, WebP, GIF, BMP or TIFF image (by its content)", 415)
    import io

    try:
        with Image.open(io.BytesIO(data)) as probe:  # reads the header only
            w, h = probe.size
    except Exception as e:  # PIL raises many types for hostile headers
        raise UploadRejected(f"{name}: unreadable {kind} header ({e})") from None
    if w * h > limits.max_pixels:
        raise UploadRejected(f"{name}: {w}x{h} = {w * h / 1e6:.0f} megapixels, over the limit of "
                             f"{limits.max_pixels / 1e6:.0f}", 413)
    try:
        return decode_bounded(data, preprocess.size, budget=budget, draft=draft, preprocess=preprocess)
    except TooBigToDecode as e:
        raise UploadRejected(f"{name}: {e.reason}", 413) from None
    except InputError as e:
        raise UploadRejected(f"{name}: {getattr(e, 'reason', e)}") from None
    except Exception as e:  # a decoder error on a malformed body
        raise UploadRejected(f"{name}: cannot decode ({e})") from None

"""The per-image work of a build, run in worker processes: decode, check, hash, resize, encode.

Jobs and results are small picklable dataclasses; per-process state (the image spec and the
evaluation thumbnails, memory-mapped so workers share one copy) is set by `init_worker`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..io.budget import DecodeBudget
from .hashing import content_hash, pdq_hash
from .imaging import FINGERPRINT_SIDE, ImageSpec, Rejected, decode, encode_jpeg, read_payload
from .leakage import AlignedMatch, EvalThumbnails, fine_descriptor, retrieval_descriptor, stored_thumbnail

__all__ = ["Job", "Processed", "EvalPrint", "init_worker", "process_batch", "fingerprint_batch"]

_HASH_MIN_SIDE = 128  # fingerprints of large images are computed on a reduced copy (speed)


@dataclass
class Job:
    seq: int
    image: bytes | None = None
    path: str | None = None
    error: str = ""  # known before decoding (unreadable source, failed download): passed through


@dataclass
class Processed:
    seq: int
    error: str = ""
    jpeg: bytes = b""
    md5: str = ""
    pdq: bytes = b""
    quality: int = 0
    size: tuple[int, int] = (0, 0)
    leak: tuple[int, float] | None = None  # (evaluation item, correlation) of the aligned rule


@dataclass
class EvalPrint:
    seq: int
    error: str = ""
    md5: str = ""
    pdq: bytes = b""
    quality: int = 0
    retrieval: np.ndarray | None = None
    stored: np.ndarray | None = None


_state: dict = {}


def init_worker(spec: ImageSpec, thumbs_dir: str | None = None, aligned: AlignedMatch | None = None,
                budget: DecodeBudget | None = None) -> None:
    single_threaded_blas()
    _state["spec"] = spec
    _state["budget"] = budget  # made before the workers forked: one budget for all of them
    _state["thumbs"] = load_thumbnails(Path(thumbs_dir), aligned) if thumbs_dir and aligned else None


def single_threaded_blas() -> None:
    """Each worker is one core: a multi-threaded BLAS in every worker made the small matrix
    products of the `aligned` rule 25x slower on a busy 2-core machine (88 vs 3.4 ms)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(1)


def load_thumbnails(folder: Path, params: AlignedMatch) -> EvalThumbnails:
    from .leakage import RETRIEVAL_SIZE, STORED_SIZE

    n = (folder / "retrieval.f32").stat().st_size // (4 * 3 * RETRIEVAL_SIZE ** 2)
    if n == 0:
        return EvalThumbnails(np.zeros((0, 3 * RETRIEVAL_SIZE ** 2), np.float32),
                              np.zeros((0, STORED_SIZE, STORED_SIZE), np.uint8), params)
    retrieval = np.memmap(folder / "retrieval.f32", np.float32, "r", shape=(n, 3 * RETRIEVAL_SIZE ** 2))
    stored = np.memmap(folder / "stored.u8", np.uint8, "r", shape=(n, STORED_SIZE, STORED_SIZE))
    return EvalThumbnails(np.asarray(retrieval), stored, params)


def _hashable(img: Image.Image) -> Image.Image:
    """A copy reduced by an integer box factor to >= _HASH_MIN_SIDE px: fingerprints only look at
    64x64 or less, and this is ~5x cheaper than resampling the full photo."""
    factor = min(img.size) // _HASH_MIN_SIDE
    return img.reduce(factor) if factor >= 2 else img


def process_one(job: Job) -> Processed:
    if job.error:
        return Processed(job.seq, error=job.error)
    spec: ImageSpec = _state["spec"]
    try:
        data = read_payload(job.image, job.path)
        img, size = decode(data, spec, _state.get("budget"))
        small = _hashable(img)
        pdq, quality = pdq_hash(small)
        leak = None
        thumbs: EvalThumbnails | None = _state.get("thumbs")
        if thumbs is not None and len(thumbs):
            leak = thumbs.match(retrieval_descriptor(small), fine_descriptor(small))
        jpeg = encode_jpeg(img, spec)
    except Rejected as e:
        return Processed(job.seq, error=e.reason)
    except (OSError, ValueError) as e:  # a decoder failing late, e.g. while resizing
        return Processed(job.seq, error=f"cannot process image ({e})")
    return Processed(job.seq, jpeg=jpeg, md5=content_hash(data), pdq=pdq, quality=quality, size=size, leak=leak)


def process_batch(jobs: list[Job]) -> list[Processed]:
    return [process_one(j) for j in jobs]


def fingerprint_one(job: Job) -> EvalPrint:
    """What the exclusion set keeps of one evaluation image (no size limit, no output)."""
    if job.error:
        return EvalPrint(job.seq, error=job.error)
    try:
        data = read_payload(job.image, job.path)
        spec = ImageSpec(size=FINGERPRINT_SIDE, min_side=1)
        img, _ = decode(data, spec)
        small = _hashable(img)
        pdq, quality = pdq_hash(small)
        return EvalPrint(job.seq, md5=content_hash(data), pdq=pdq, quality=quality,
                         retrieval=retrieval_descriptor(small), stored=stored_thumbnail(small))
    except Rejected as e:
        return EvalPrint(job.seq, error=e.reason)
    except (OSError, ValueError) as e:
        return EvalPrint(job.seq, error=f"cannot process image ({e})")


def fingerprint_batch(jobs: list[Job]) -> list[EvalPrint]:
    single_threaded_blas()
    return [fingerprint_one(j) for j in jobs]

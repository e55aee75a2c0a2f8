"""Device and numeric precision: what `auto` means on the machine we run on."""
from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["resolve_device", "resolve_precision", "precision_name", "default_batch_size", "batch_size_for",
           "wants_draft", "cpu_has_fast_bf16", "cpu_flags", "int8_scan_pays", "configure_threads", "release_memory"]

# torch is imported where a device or dtype object is made: the decisions by name (precision,
# batch size, draft decoding) are a Ray driver's too, which never loads a model
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
PRECISIONS = ("auto", *DTYPE_NAMES)
DEVICES = ("auto", "cpu", "cuda", "mps")
# Images per model call. On CPUs larger batches only add cache misses, smaller ones repeat the
# vocabulary scan (0.4 s each): `taxoclip predict` of ViT-L/14 in bf16 ran at 1.69 photos/s
# with 8 per call, 1.80 with 16 and 1.49 with 32 (bench/bench_predict.py, 2-core EPYC; the
# tower alone, bench/cpu_ceiling.py: 2.1-2.2, 1.9 and 1.5-1.7). GPUs want large batches.
BATCH_SIZES = {"cpu": 16, "cuda": 128, "mps": 32}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; asking for a missing one is an error."""
    import torch

    if isinstance(device, torch.device):
        return device
    name = str(device).lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but no CUDA GPU is available")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} requested but Apple MPS is not available")
    return dev


def default_batch_size(device: torch.device | str = "auto") -> int:
    return BATCH_SIZES.get(resolve_device(device).type, 16)


def batch_size_for(card, device_type: str) -> int:
    """Images per model call: a model card's own CPU figure (small models want larger batches), else the device's."""
    if card is not None and card.batch_size and device_type == "cpu":
        return card.batch_size
    return BATCH_SIZES.get(device_type, 16)


def wants_draft(card, precision: str) -> bool:
    """Whether JPEGs are decoded at reduced size (`ImageLoader(draft=…)`) for a model run in
    `precision` (a name): its card says, else reduced precision does (fp32 stays faithful to
    pybioclip)."""
    return card.draft_decode if card is not None and card.draft_decode is not None else precision != "fp32"


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is not there)."""
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return frozenset()


def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bf16 natively (AMX or AVX512-BF16), so bf16 beats fp32."""
    return bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})


def int8_scan_pays() -> bool:
    """Whether packing a vocabulary for the int8 product (`TextBank.pack_int8`) speeds a server.

    On AVX2-only CPUs it scans batches of 16 ~2x faster than fp32 (2-core EPYC Zen 3). With
    AVX-512 both products take the same time per photo, and the int8 op holds the GIL while the
    fp32 one does not, so a server ran 10 % slower packed (2-core Xeon with AMX,
    `bench/bench_serve.py`: 116-117 vs 127-131 photos/s). On a Zen 4 (AVX-512 without AMX)
    the packed product is 2.6x faster at batch 16 alone (`bench/bench_scan.py`), yet the
    server ran no faster packed (132.9 vs 141.1 photos/s): it stays unpacked there too.
    Where flags are unknown, pack.
    """
    return "avx512f" not in cpu_flags()


def precision_name(precision: str = "auto", device_type: str = "cpu") -> str:
    """What `resolve_precision` gives, by name ("fp32", "bf16", "fp16"); imports torch only to
    ask a CUDA device about bf16."""
    name = str(precision).lower()
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if name != "auto":
        if name == "fp16" and device_type == "cpu":
            raise ValueError("fp16 is not supported on the CPU (no fast kernels); use bf16 or fp32")
        return name
    if device_type == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device_type == "mps":
        return "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def resolve_precision(precision: str = "auto", device: torch.device | str = "cpu") -> torch.dtype:
    """`auto` = bf16 where the hardware runs it natively (cosine >= 0.999 with fp32), else fp32."""
    import torch

    return getattr(torch, DTYPE_NAMES[precision_name(precision, torch.device(device).type)])


def configure_threads() -> int:
    """Use every core we are allowed for intra-op work (containers often cap the CPU set)."""
    import torch

    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, n))
    return torch.get_num_threads()


def release_memory() -> None:
    """Give freed heap memory back to the OS (glibc keeps it after loading weights, ~0.5 GB)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass

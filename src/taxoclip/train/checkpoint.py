"""Checkpoints: atomic writes, a `latest` pointer, and everything an exact resume needs.

A checkpoint is one file `checkpoints/step-NNNNNNN.pt` (torch.save of tensors and plain
containers, read back with `weights_only=True`): model weights (fp32 masters when training
in bf16), optimiser and grad-scaler state, the step, each data stream's position, every
process's RNG states, and the run's config. It is written to a temporary name, fsynced
and renamed, then `checkpoints/latest` (a one-line file naming it) is replaced the same
way, so a crash at any moment leaves the previous checkpoint usable.
"""
from __future__ import annotations

import random
from pathlib import Path

import torch

from ..durable import atomic_file, write_atomic
from ..errors import TaxoclipError

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "find_checkpoint", "prune", "rng_state",
           "set_rng_state", "LATEST"]

LATEST = "latest"


class CheckpointError(TaxoclipError):
    """A checkpoint that cannot be found or read."""


def save_checkpoint(run_dir: str | Path, step: int, payload: dict, keep: int = 0) -> Path:
    """Write `payload` as the checkpoint of `step` and point `latest` at it (call on one process)."""
    ckdir = Path(run_dir) / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    path = ckdir / f"step-{step:07d}.pt"
    with atomic_file(path) as fh:
        torch.save(payload, fh)
    write_atomic(ckdir / LATEST, f"{path.name}\n".encode())
    if keep > 0:
        prune(ckdir, keep)
    return path


def prune(ckdir: Path, keep: int) -> None:
    files = sorted(ckdir.glob("step-*.pt"))
    for old in files[:-keep]:
        try:
            old.unlink()
        except OSError:
            pass


def find_checkpoint(spec: str | Path, run_dir: str | Path | None = None) -> Path:
    """`latest` (in the run directory), a checkpoint file, or a run/checkpoints directory."""
    spec = str(spec)
    if spec == LATEST:
        if run_dir is None:
            raise CheckpointError("--resume latest needs the run directory (out)")
        base = Path(run_dir) / "checkpoints"
    else:
        base = Path(spec).expanduser()
        if base.is_file():
            return base
        if (base / "checkpoints").is_dir():
            base = base / "checkpoints"
    pointer = base / LATEST
    if pointer.is_file():
        target = base / pointer.read_text().strip()
        if target.is_file():
            return target
    files = sorted(base.glob("step-*.pt")) if base.is_dir() else []
    if not files:
        raise CheckpointError(f"no checkpoint in {base}")
    return files[-1]


def load_checkpoint(path: str | Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from None


def rng_state() -> dict:
    """This process's random states (Python, torch CPU, CUDA)."""
    version, state, gauss = random.getstate()
    out = {"python": [version, list(state), gauss], "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_state(state: dict) -> None:
    version, st, gauss = state["python"]
    random.setstate((version, tuple(st), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])

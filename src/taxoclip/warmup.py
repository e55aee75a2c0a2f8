"""A bundled model's one-time preparation, run in a child process before this one imports torch.

Why: a model's first run builds its image tower's inference form (`models.inference`) and
caches it; later runs load that and import neither open_clip nor timm. Building it imports
open_clip, timm and torchvision (with torch._dynamo, sympy and transformers behind them):
~0.33 GB that then stays resident for the rest of the run, on top of what every run holds. A
first `taxoclip predict photo.jpg` after install peaked at 1.12 GB against 0.77 for a later
run (2-core AMD EPYC Zen 4). Prepared in a child that has exited before this process imports
torch, the first run peaks at the larger of the two (the child: ~0.90 GB), for ~3 s more.

Only from a process without torch: the Python API, which imports torch first, prepares
in-process as before (a child would hold a second copy of torch's ~0.3 GB of private pages).
Nothing here decides an answer: if the child fails, or its tower is missing later, the run
builds the tower itself, as it did before this module existed.
"""
from __future__ import annotations

import importlib.metadata
import importlib.resources
import json
import logging
import os
import subprocess
import sys

from .cache import cache_root, file_sha256, hash_key

__all__ = ["prepare_bundled"]

log = logging.getLogger(__name__)

# The child: what the run itself would load (`models.load_model` caches the tower as it goes,
# atomically). It leaves with os._exit: the interpreter's own shutdown of torch and the modules
# it imported took ~80 MB more than the preparation's peak (0.97 against 0.89 GB), and ~0.4 s.
_CHILD = ("import os, sys; from taxoclip.models import load_model; "
          "load_model(sys.argv[1], device=sys.argv[2], precision=sys.argv[3]); os._exit(0)")


def prepare_bundled(model: str, *, device: str = "auto", precision: str = "auto", text: bool = False) -> bool:
    """Build the cached image tower of bundled `model` in a child process, once per device,
    precision and installation. Returns whether a child ran and succeeded.

    Skipped (False) where it would not lower this run's memory: torch already imported here,
    a run that needs the text tower (building it imports open_clip anyway), a model that is
    not bundled or whose tower is not a timm one, a cache that cannot be written.
    """
    if text or "torch" in sys.modules or not model or any(c in model for c in "/\\:") or model.startswith("."):
        return False  # (a path or hub id is not a bundled model's name)
    folder = importlib.resources.files("taxoclip") / "bundled" / model  # bundled models live under their id
    try:
        vision = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]["vision_cfg"]
        manifest = file_sha256(str(folder / "MANIFEST.json"))
    except (OSError, ValueError, KeyError, TypeError):  # not a bundled open_clip model, or damaged: loading says which
        return False
    if "timm_model_name" not in vision:
        return False
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return False
    from . import __version__

    marker = cache_root() / "prepared" / hash_key(model, device, precision, manifest, torch_version, __version__,
                                                  os.environ.get("TAXOCLIP_ONNX", "1"))
    if marker.exists() or not _writable(cache_root()):
        return False
    from functools import partial

    from .orphans import die_with_parent

    done = subprocess.run([sys.executable, "-c", _CHILD, model, device, precision], capture_output=True, text=True,
                          preexec_fn=partial(die_with_parent, os.getpid()))
    if done.returncode != 0:  # the run prepares in-process and reports any error itself
        lines = done.stderr.strip().splitlines()
        log.info("preparing %s in a child process failed (%s); preparing it in this one",
                 model, lines[-1] if lines else done.returncode)
        return False
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("")
    except OSError:
        pass  # the tower is cached all the same; a later run only tries again
    return True


def _writable(path) -> bool:
    """Whether `path`, or the nearest folder above it that exists, can be written (the child's tower could be cached)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return os.access(path, os.W_OK)

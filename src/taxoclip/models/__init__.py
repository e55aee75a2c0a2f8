"""Models: ids and the registry, loading in the open_clip layout, preprocessing, precision.

    >>> from taxoclip.models import load_model
    >>> model = load_model()                       # taxoclip-mini, bundled with the package
    >>> model = load_model("bioclip-2")            # bf16 on CPUs that run it natively
    >>> model.encode_image(pixels)                  # [B, 768], L2-normalised
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from ..io.preprocess import ImagePreprocess
from .registry import ModelCard, find_card, list_cards, register
from .runtime import default_batch_size, resolve_device, resolve_precision
from .sources import BUNDLE_FIX, ModelLoadError, ModelSource, hf_file, resolve

if TYPE_CHECKING:
    import torch

    from .clip import ClipModel
    from .loading import instantiate

# What imports torch loads on first use: knowing a model (`resolve`: its files, card, identity
# and preprocessing) does not need it, so a Ray driver or a decode worker stays small.
_LAZY = {"ClipModel": ".clip", "instantiate": ".loading"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ClipModel", "ModelCard", "ModelLoadError", "ModelSource", "ImagePreprocess",
    "load_model", "list_models", "resolve", "instantiate", "register", "find_card", "list_cards",
    "resolve_device", "resolve_precision", "default_batch_size", "hf_file", "save_model", "DEFAULT_MODEL",
]

DEFAULT_MODEL = "taxoclip-mini"  # bundled: works offline from a fresh install


def load_model(model_id: str = DEFAULT_MODEL, *, pretrained: str | None = None, device: str = "auto",
               precision: str = "auto", text: bool = False) -> ClipModel:
    """Load any model id for inference.

    `text=False` defers reading the text tower until a text is encoded (a Tree-of-Life
    prediction never needs it). Raises `ModelLoadError` with the id and the cause.
    """
    from .clip import ClipModel
    from .runtime import configure_threads, release_memory

    configure_threads()
    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    source = resolve(model_id, pretrained)
    try:
        model = ClipModel.load(source, device=dev, dtype=dtype, text=text)
    except (OSError, RuntimeError, ValueError) as e:
        if isinstance(e, ModelLoadError):
            raise
        fix = f"; {BUNDLE_FIX}" if source.card and source.card.bundled else ""
        raise ModelLoadError(f"model {model_id}: cannot read weights {source.weights}: {e}{fix}") from e
    if model.net is not None:  # built here: loading left freed buffers behind (a cached tower leaves none)
        release_memory()
    return model


def list_models(architectures: bool = False) -> list[str]:
    """Registered aliases (the bundled model first); with `architectures`, every open_clip name too."""
    names = [c.name for c in list_cards()]
    if architectures:
        import open_clip

        names += list(open_clip.list_models())
    return names


def save_model(net: torch.nn.Module, model_cfg: dict, out_dir: str | Path, preprocess_cfg: dict | None = None) -> Path:
    """Write `open_clip_config.json` + `open_clip_model.safetensors`, the layout every loader reads."""
    import json

    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    tmp = out / "open_clip_model.safetensors.tmp"
    save_file(state, str(tmp))
    tmp.replace(out / "open_clip_model.safetensors")
    cfg = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}}
    (out / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    return out

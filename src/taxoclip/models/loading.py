"""Reading weights into an open_clip model quickly (`sources` finds them).

Weights are read tensor by tensor into a model built on the `meta` device, cast straight to
the target precision: no random initialisation, no full fp32 copy in memory.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

# resolving lives in `sources` (no torch); these names stay importable from here
from .sources import BUNDLE_FIX, ModelLoadError, ModelSource, file_fingerprint, hf_file, package_path, resolve

__all__ = ["ModelSource", "ModelLoadError", "resolve", "instantiate", "load_weights", "hf_file", "package_path",
           "file_fingerprint", "BUNDLE_FIX"]

log = logging.getLogger(__name__)


# ----- building ------------------------------------------------------------------------------
def instantiate(model_cfg: dict, device: str | torch.device = "meta") -> nn.Module:
    """Build the open_clip model class for a config, without downloading any tower weights.

    On the `meta` device nothing is allocated or initialised; weights are assigned later.
    """
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = copy.deepcopy(model_cfg)
    vision, text = cfg.setdefault("vision_cfg", {}), cfg.setdefault("text_cfg", {})
    if "timm_model_name" in vision:
        vision["timm_model_pretrained"] = False
    if "hf_model_name" in text:
        text["hf_model_pretrained"] = False
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in text
    if custom_text and "multimodal_cfg" in cfg:
        from open_clip.coca_model import CoCa as cls
    else:
        cls = CustomTextCLIP if custom_text else CLIP
    with torch.device(device):
        return cls(**cfg)


def _read_tensors(path: Path, want: Callable[[str], bool]) -> Iterator[tuple[str, torch.Tensor]]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        # The file is memory-mapped while open, and every page read stays in our RSS until it
        # closes; reopening it every few tensors keeps the peak near one group, not the file.
        with safe_open(str(path), framework="pt") as f:
            keys = [k for k in f.keys() if want(k)]
        for i in range(0, len(keys), 32):
            with safe_open(str(path), framework="pt") as f:
                group = [(k, f.get_tensor(k)) for k in keys[i:i + 32]]
            yield from group
            del group
        return
    sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    for k, v in sd.items():
        k = k[7:] if k.startswith("module.") else k
        if want(k):
            yield k, v


def read_scalars(path: Path) -> dict[str, torch.Tensor]:
    """`logit_scale` (and `logit_bias`) of a checkpoint, in fp32, without reading anything else."""
    return {k: v.detach().float().clone() for k, v in _read_tensors(path, lambda k: k in ("logit_scale", "logit_bias"))}


class _NeedsFullLoad(Exception):
    """The checkpoint does not map 1:1 onto the model (open_clip must convert it)."""


def is_image_key(key: str) -> bool:
    return key.startswith("visual.")


def is_text_key(key: str) -> bool:
    return not key.startswith("visual.") and key not in ("logit_scale", "logit_bias")


def load_weights(model: nn.Module, path: Path, dtype: torch.dtype, device: torch.device,
                 want: Callable[[str], bool] = lambda k: True) -> dict[str, torch.Tensor]:
    """Assign the checkpoint's tensors (those `want` accepts) into a meta-built model.

    Returns the fp32 values of `logit_scale`/`logit_bias`, which must not be rounded to bf16
    (exp(ln 100) in bf16 is 98.9, enough to move every probability).
    """
    expected = {k: v for k, v in _all_tensors(model).items() if want(k)}
    scalars, seen = {}, set()
    for key, value in _read_tensors(path, want):
        if key not in expected:
            raise _NeedsFullLoad(f"unexpected key {key}")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise _NeedsFullLoad(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(expected[key].shape)}")
        if key in ("logit_scale", "logit_bias"):
            scalars[key] = value.detach().float().clone()
        if value.is_floating_point():
            value = value.to(device=device, dtype=dtype)
        else:
            value = value.to(device)
        _assign(model, key, value)
        seen.add(key)
    missing = set(expected) - seen
    if missing:
        raise _NeedsFullLoad(f"missing keys {sorted(missing)[:5]}")
    return scalars


def _all_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.state_dict(keep_vars=True))


def _assign(model: nn.Module, key: str, value: torch.Tensor) -> None:
    mod_name, _, attr = key.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    if attr in mod._parameters:
        mod._parameters[attr] = nn.Parameter(value, requires_grad=False)
    else:
        mod._buffers[attr] = value


def fix_derived_buffers(model: nn.Module, device: torch.device) -> None:
    """Rebuild buffers that are computed, not saved: open_clip's causal mask, and the position and
    token-type ids that Hugging Face text towers keep as non-persistent buffers."""
    for mod in model.modules():
        for name, buf in list(mod._buffers.items()):
            if buf is None or not buf.is_meta:
                continue
            if name == "attn_mask":
                n = buf.shape[-1]
                mod._buffers[name] = torch.full((n, n), float("-inf"), device=device).triu_(1)
            elif name == "position_ids":
                mod._buffers[name] = torch.arange(buf.shape[-1], device=device).expand(buf.shape).clone()
            elif name == "token_type_ids":
                mod._buffers[name] = torch.zeros(buf.shape, dtype=buf.dtype, device=device)


def meta_leftovers(module: nn.Module) -> list[str]:
    """Tensors still without values, saved ones and non-persistent buffers alike."""
    left = [k for k, v in _all_tensors(module).items() if v.is_meta]
    return left + [k for k, v in module.named_buffers() if v.is_meta and k not in left]


def full_load(model_cfg: dict, path: Path, dtype: torch.dtype, device: torch.device) -> tuple[nn.Module, dict]:
    """The slow, general path: random init, then open_clip's checkpoint conversion and loading."""
    from open_clip.factory import load_checkpoint

    model = instantiate(model_cfg, device="cpu")
    load_checkpoint(model, str(path), strict=True, weights_only=True)
    scalars = {k: getattr(model, k).detach().float().clone() for k in ("logit_scale", "logit_bias")
               if isinstance(getattr(model, k, None), torch.Tensor)}
    model.requires_grad_(False)
    return model.to(device=device, dtype=dtype), scalars


def fast_load(model_cfg: dict, path: Path, dtype: torch.dtype, device: torch.device,
              want: Callable[[str], bool]) -> tuple[nn.Module, dict] | None:
    """Meta-build and assign; None when the checkpoint needs open_clip's conversions."""
    model = instantiate(model_cfg)
    try:
        scalars = load_weights(model, path, dtype, device, want)
    except _NeedsFullLoad as e:
        log.info("falling back to open_clip loading for %s: %s", path, e)
        return None
    fix_derived_buffers(model, device)
    return model, scalars

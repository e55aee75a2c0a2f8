"""Resolving model ids to files, and reading weights into an open_clip model quickly.

Every id goes through `resolve`: a registry alias (`bioclip-2`), `hf-hub:org/name`, a local
directory in the open_clip layout (`open_clip_config.json` + `open_clip_model.safetensors` or
`open_clip_pytorch_model.bin`, optionally prefixed `local-dir:`), or an open_clip model name
with a pretrained tag or weights file.

Weights are read tensor by tensor into a model built on the `meta` device, cast straight to
the target precision: no random initialisation, no full fp32 copy in memory.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from ..errors import TaxoclipError
from .registry import ModelCard, find_card

__all__ = ["ModelSource", "ModelLoadError", "resolve", "instantiate", "load_weights", "hf_file", "package_path"]

log = logging.getLogger(__name__)

CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class ModelLoadError(TaxoclipError, RuntimeError):
    """A model id that cannot be resolved or loaded; the message names the id and the cause."""


@dataclass
class ModelSource:
    """Where a model's config and weights are, and what we know about it."""

    id: str
    model_cfg: dict
    preprocess_cfg: dict = field(default_factory=dict)
    weights: Path | None = None
    card: ModelCard | None = None
    tokenizer_dir: Path | None = None
    vocabulary: Path | None = None  # a model directory's own embeddings/ (published layout)

    @property
    def fingerprint(self) -> str:
        """A short stable key for caches derived from this model (e.g. text banks)."""
        return file_fingerprint(self.weights) if self.weights else hashlib.sha1(
            json.dumps(self.model_cfg, sort_keys=True).encode()).hexdigest()[:16]


def file_fingerprint(path: Path | str) -> str:
    """Identify a file's content cheaply: a Hugging Face blob's name is already its hash."""
    real = Path(os.path.realpath(path))
    if real.parent.name == "blobs" and len(real.name) >= 40:
        return real.name[:16]
    st = real.stat()
    return hashlib.sha1(f"{real}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]


def package_path(spec: str) -> Path:
    """A path, or `pkg:MODULE/REL/PATH` inside an installed package (so configs name no machine's paths).

    Raises FileNotFoundError naming the package or the missing file.
    """
    if not spec.startswith("pkg:"):
        return Path(spec).expanduser()
    module, _, rel = spec[4:].partition("/")
    import importlib.util

    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(f"{spec}: package {module!r} is not installed (pip install {module.replace('_', '-')})")
    path = Path(list(found.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise FileNotFoundError(f"{spec}: {path} does not exist in the installed package")
    return path


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_cache() -> str | None:
    return os.environ.get("HF_HUB_CACHE") or None


def hf_file(repo_id: str, filename: str, repo_type: str = "model") -> Path:
    """Path of a file of a Hugging Face repo, from the cache or downloaded into it.

    Reads HF_HUB_CACHE and HF_HUB_OFFLINE at call time (not import time), so tests and
    long-running services can point it elsewhere.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub import errors as hf_errors

    try:
        return Path(hf_hub_download(repo_id, filename, repo_type=repo_type, cache_dir=_hub_cache(),
                                    local_files_only=_offline()))
    except hf_errors.LocalEntryNotFoundError as e:
        where = _hub_cache() or "the default Hugging Face cache"
        why = "HF_HUB_OFFLINE is set" if _offline() else "the hub could not be reached"
        raise FileNotFoundError(f"{repo_type} {repo_id}: {filename} is not in {where} and {why}") from e
    except (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError) as e:
        raise FileNotFoundError(f"{repo_type} {repo_id} does not exist on the Hugging Face hub") from e
    except hf_errors.EntryNotFoundError as e:
        raise FileNotFoundError(f"{repo_type} {repo_id} has no file {filename}") from e


def _from_dir(model_id: str, path: Path, card: ModelCard | None) -> ModelSource:
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file():
        raise ModelLoadError(f"model {model_id}: directory {path} has no {CONFIG_FILE}")
    weights = next((path / w for w in WEIGHT_FILES if (path / w).is_file()), None)
    if weights is None:
        raise ModelLoadError(f"model {model_id}: directory {path} has no weights ({' or '.join(WEIGHT_FILES)})")
    cfg = json.loads(cfg_path.read_text())
    text = cfg["model_cfg"].get("text_cfg", {})
    if "hf_model_name" in text and (path / "config.json").is_file():
        # a Hugging Face text tower shipped with the model: build it from here, never from the hub
        text.update(hf_model_name=str(path), hf_tokenizer_name=str(path))
    tok = path if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file() else None
    vocab = path / "embeddings" if (path / "embeddings").is_dir() else None
    return ModelSource(model_id, cfg["model_cfg"], cfg.get("preprocess_cfg", {}), weights, card, tok, vocab)


BUNDLE_MANIFEST = "MANIFEST.json"
BUNDLE_FIX = "reinstall taxoclip (pip install --force-reinstall taxoclip, or pip install -e . in a checkout)"


def _from_bundle(model_id: str, target: str, card: ModelCard) -> ModelSource:
    """A model shipped inside a package: every file its manifest lists must be there, whole."""
    fix = BUNDLE_FIX
    try:
        path = package_path(target)
        manifest = json.loads((path / BUNDLE_MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"bundled model {card.name}: cannot read its files ({e}); {fix}") from None
    for name, meta in manifest["files"].items():
        f = path / name
        size = f.stat().st_size if f.is_file() else None
        if size != meta["size"]:
            what = "is missing" if size is None else f"has {size:,} bytes, not {meta['size']:,}"
            raise ModelLoadError(f"bundled model {card.name}: {f} {what}; {fix}")
    return _from_dir(model_id, path, card)


def _from_hub(model_id: str, repo: str, card: ModelCard | None) -> ModelSource:
    try:
        cfg = json.loads(hf_file(repo, CONFIG_FILE).read_text())
    except FileNotFoundError as e:
        raise ModelLoadError(f"model {model_id}: {e}") from None
    errors = []
    for name in WEIGHT_FILES:
        try:
            weights = hf_file(repo, name)
            break
        except FileNotFoundError as e:
            errors.append(str(e))
    else:
        raise ModelLoadError(f"model {model_id}: no weights found ({'; '.join(errors)})")
    return ModelSource(model_id, cfg["model_cfg"], cfg.get("preprocess_cfg", {}), weights, card)


def _from_open_clip(model_id: str, pretrained: str | None, card: ModelCard | None) -> ModelSource:
    import open_clip

    cfg = open_clip.get_model_config(model_id)
    if cfg is None:
        raise ModelLoadError(
            f"unknown model {model_id!r}: not a registered alias ({', '.join(c.name for c in _cards())}), "
            f"an hf-hub: id, a directory with {CONFIG_FILE}, or an open_clip model name (see `taxoclip list-models`)")
    cfg = copy.deepcopy(cfg)
    tags = open_clip.list_pretrained_tags_by_model(model_id)
    if pretrained is None:
        if len(tags) != 1:
            hint = f"one of its tags ({', '.join(tags)}) or a weights file" if tags else "a weights file"
            raise ModelLoadError(f"model {model_id}: choose pretrained weights with --pretrained: {hint}")
        pretrained = tags[0]
    preprocess = dict(cfg.pop("preprocess_cfg", {}))
    if os.path.isfile(pretrained):
        weights = Path(pretrained)
    elif pretrained in tags:
        pcfg = open_clip.get_pretrained_cfg(model_id, pretrained)
        preprocess.update({k: v for k, v in pcfg.items() if k in ("mean", "std", "interpolation", "resize_mode")})
        try:
            weights = Path(open_clip.pretrained.download_pretrained(pcfg, cache_dir=_hub_cache()))
        except Exception as e:  # network and cache errors come in many types
            raise ModelLoadError(f"model {model_id} ({pretrained}): weights unavailable: {e}") from None
    else:
        raise ModelLoadError(f"model {model_id}: pretrained {pretrained!r} is neither a file nor one of its tags "
                             f"({', '.join(tags) or 'none'})")
    return ModelSource(f"{model_id}:{pretrained}", cfg, preprocess, weights, card)


def _cards():
    from .registry import list_cards

    return list_cards()


def resolve(model_id: str, pretrained: str | None = None) -> ModelSource:
    """Find config and weights for any model id; raise ModelLoadError naming the id if we cannot."""
    card = find_card(model_id)
    target = card.source if card else model_id
    pretrained = pretrained or (card.pretrained if card else None)
    if card is not None and card.bundled:
        src = _from_bundle(model_id, target, card)
    elif target.startswith("local-dir:"):
        path = Path(target[len("local-dir:"):]).expanduser()
        if not path.is_dir():
            raise ModelLoadError(f"model {model_id}: directory {path} does not exist")
        src = _from_dir(model_id, path, card)
    elif target.startswith("pkg:"):
        try:
            src = _from_dir(model_id, package_path(target), card)
        except FileNotFoundError as e:
            raise ModelLoadError(f"model {model_id}: {e}") from None
    elif target.startswith("hf-hub:"):
        src = _from_hub(model_id, target[len("hf-hub:"):], card)
    elif os.path.isdir(os.path.expanduser(target)):
        src = _from_dir(model_id, Path(target).expanduser(), card)
    else:
        src = _from_open_clip(target, pretrained, card)
    size = src.model_cfg.get("vision_cfg", {}).get("image_size")
    if size is not None and "size" not in src.preprocess_cfg:
        src.preprocess_cfg = {**src.preprocess_cfg, "size": size}
    if card and card.preprocess:
        src.preprocess_cfg = {**src.preprocess_cfg, **card.preprocess}
    return src


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

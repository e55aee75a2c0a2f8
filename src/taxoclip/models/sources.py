"""Resolving model ids to files: which config, weights, tokenizer and vocabulary an id names.

Every id goes through `resolve`: a registry alias (`bioclip-2`), `hf-hub:org/name`, a local
directory in the open_clip layout (`open_clip_config.json` + `open_clip_model.safetensors` or
`open_clip_pytorch_model.bin`, optionally prefixed `local-dir:`), or an open_clip model name
with a pretrained tag or weights file. No torch here: a process that only needs to know a
model (a Ray driver: its identity, preprocessing and batch size) stays small and starts fast.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TaxoclipError
from .registry import ModelCard, find_card

__all__ = ["ModelSource", "ModelLoadError", "resolve", "hf_file", "package_path", "file_fingerprint", "BUNDLE_FIX"]

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

"""`ClipModel`: a loaded image-text model with its preprocessing, tokenizer and precision.

Towers are read on demand: identifying species against a published vocabulary needs only
the image tower, so the text tower's weights stay on disk until a text is first encoded.
A convolutional image tower runs in inference form (`inference.py`), cached after its first
use, so a later run of such a model builds nothing and imports neither timm nor open_clip.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import cache_root, hash_key
from ..io.preprocess import ImagePreprocess
from . import inference
from .loading import (ModelSource, fast_load, fix_derived_buffers, full_load, is_text_key, load_weights, meta_leftovers,
                      read_scalars)

__all__ = ["ClipModel"]

log = logging.getLogger(__name__)


class ClipModel:
    """An open_clip model ready for inference (eval mode, no gradients, one precision)."""

    def __init__(self, source: ModelSource, net: nn.Module | None, *, device: torch.device, dtype: torch.dtype,
                 scalars: dict[str, torch.Tensor], text_loaded: bool, visual: nn.Module | None = None):
        self.source = source
        self.net = net.eval() if net is not None else None  # None until a text is encoded (cached tower)
        self.visual = (visual if visual is not None else net.visual).eval()
        self.device = device
        self.dtype = dtype
        self.preprocess = ImagePreprocess.from_config(source.preprocess_cfg)
        ls = scalars.get("logit_scale")
        self.logit_scale = float(ls.exp()) if ls is not None else 100.0
        self._text_loaded = text_loaded
        self._tokenizer = None
        # Convolutional towers run ~1.6x faster on CPUs with NHWC tensors (oneDNN's native layout).
        self._memory_format = torch.channels_last if _convolutional(self.visual) else torch.contiguous_format
        self.visual.to(memory_format=self._memory_format)
        self._image_forward = self.visual
        self._compiled_batch: int | None = None
        self._lock = threading.Lock()

    # ----- construction ---------------------------------------------------------------------
    @classmethod
    def load(cls, source: ModelSource, *, device: torch.device, dtype: torch.dtype,
             text: bool = False) -> "ClipModel":
        """Read the image tower (and the text tower if `text`) from `source.weights`."""
        if source.weights is None:
            raise ValueError(f"model {source.id} has no weights")
        cached = _tower_path(source, dtype, device)
        if not text and cached is not None and cached.is_file():
            try:
                visual = _onnx_tower(source, None, dtype, device, cached)  # exported already: no graph to load
                if visual is None:
                    graph = inference.load_tower(cached, device)
                    visual = _onnx_tower(source, graph, dtype, device, cached) or graph
                return cls(source, None, device=device, dtype=dtype, scalars=read_scalars(source.weights),
                           text_loaded=False, visual=visual)
            except Exception as e:  # a cache from another version or a damaged file: rebuild it
                log.info("cached image tower %s unusable (%s); rebuilding it", cached, e)
        want = (lambda k: True) if text else (lambda k: not is_text_key(k))
        loaded = fast_load(source.model_cfg, source.weights, dtype, device, want)
        if loaded is None:
            net, scalars = full_load(source.model_cfg, source.weights, dtype, device)
            text = True
        else:
            net, scalars = loaded
            leftovers = [k for k in meta_leftovers(net) if text or not is_text_key(k)]
            if leftovers:  # a tower with computed buffers we do not know how to rebuild
                log.info("meta tensors left (%s); using open_clip loading", leftovers[:3])
                net, scalars = full_load(source.model_cfg, source.weights, dtype, device)
                text = True
        return cls(source, net, device=device, dtype=dtype, scalars=scalars, text_loaded=text,
                   visual=_inference_form(source, net.visual, dtype, device, cached))

    # ----- properties -----------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self.source.id

    @property
    def card(self):
        return self.source.card

    @property
    def embed_dim(self) -> int:
        proj = getattr(self.visual, "proj", None)
        if isinstance(proj, torch.Tensor):
            return proj.shape[-1]
        return int(self.source.model_cfg["embed_dim"])

    @property
    def fingerprint(self) -> str:
        return self.source.fingerprint

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = _make_tokenizer(self.source)
        return self._tokenizer

    # ----- encoders -------------------------------------------------------------------------
    def compile(self, batch_size: int) -> None:
        """Compile the image tower for a fixed batch size (inputs are padded to it).

        Worth it for long runs only: the first batch pays tens of seconds of compilation.
        On the CPU, weights are frozen into the graph (prepacked for oneDNN).
        """
        if isinstance(self.visual, inference.OnnxTower):  # ONNX Runtime has compiled it already
            return
        options = {"freezing": True} if self.device.type == "cpu" else {}
        self._image_forward = torch.compile(self.visual, dynamic=False, options=options)
        self._compiled_batch = batch_size

    @torch.inference_mode()
    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """[B, 3, H, W] float pixels -> [B, D] float32 embeddings."""
        n = pixels.shape[0]
        x = pixels.to(device=self.device, dtype=self.dtype, non_blocking=True).contiguous(memory_format=self._memory_format)
        if self._compiled_batch and n < self._compiled_batch:
            x = torch.cat([x, x.new_zeros((self._compiled_batch - n, *x.shape[1:]))])
        feats = self._image_forward(x)[:n].float()
        return F.normalize(feats, dim=-1) if normalize else feats

    @torch.inference_mode()
    def space_probe(self) -> torch.Tensor:
        """[3, D] unit embeddings of three fixed synthetic images: where this model's image space puts them.

        Vectors made by one model (prototypes, an index) mean nothing in another's space, even at
        the same width (a retrained or random-init copy); comparing probes tells the spaces apart
        whatever the weights' file path, precision or device."""
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(0)
        ramp = np.linspace(0, 255, 64)
        images = [np.stack([*np.meshgrid(ramp, ramp[::-1]), np.full((64, 64), 128.0)], -1),
                  rng.integers(0, 256, (64, 64, 3)),
                  np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((8, 8, 1)))]
        pixels = torch.stack([self.preprocess(Image.fromarray(a.astype(np.uint8))) for a in images])
        return self.encode_image(pixels, normalize=True).cpu()

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str], normalize: bool = True, batch_size: int = 256) -> torch.Tensor:
        """Texts -> [N, D] float32 embeddings (loads the text tower on first use)."""
        self._ensure_text()
        texts = list(texts)
        if not texts:
            return torch.empty(0, self.embed_dim)
        tokenize = _padded_to_longest(self.tokenizer) if _masked_text_tower(self.net) else self.tokenizer
        # Similar lengths together, so a batch pads to little more than its texts (masked towers only).
        order = sorted(range(len(texts)), key=lambda i: len(texts[i])) if tokenize is not self.tokenizer \
            else list(range(len(texts)))
        out = torch.empty(len(texts), self.embed_dim)
        for i in range(0, len(texts), batch_size):
            idx = order[i:i + batch_size]
            tokens = tokenize([texts[j] for j in idx]).to(self.device)
            feats = self.net.encode_text(tokens).float()
            out[idx] = (F.normalize(feats, dim=-1) if normalize else feats).cpu()
        return out

    def _ensure_text(self) -> None:
        with self._lock:
            if self._text_loaded:
                return
            if self.net is None:  # the image tower came from the cache: build the model around it
                loaded = fast_load(self.source.model_cfg, self.source.weights, self.dtype, self.device, is_text_key)
                self.net = (loaded[0] if loaded is not None else
                            full_load(self.source.model_cfg, self.source.weights, self.dtype, self.device)[0]).eval()
                left = [k for k in meta_leftovers(self.net) if is_text_key(k)]
                if left:
                    raise RuntimeError(f"model {self.id}: text tower incomplete after loading ({left[:3]})")
                self._text_loaded = True
                return
            load_weights(self.net, self.source.weights, self.dtype, self.device, is_text_key)
            fix_derived_buffers(self.net, self.device)
            left = meta_leftovers(self.net)
            if left:
                raise RuntimeError(f"model {self.id}: text tower incomplete after loading ({left[:3]})")
            self._text_loaded = True

    def __repr__(self) -> str:
        return f"ClipModel({self.id!r}, device={self.device}, dtype={str(self.dtype).replace('torch.', '')})"


def _convolutional(visual: nn.Module) -> bool:
    """A tower made of convolutions (EfficientNet, ResNet, ConvNeXt), not a ViT (which has one:
    its patch embedding)."""
    return sum(isinstance(m, nn.Conv2d) for m in visual.modules()) > 1


def _tower_path(source: ModelSource, dtype: torch.dtype, device: torch.device) -> Path | None:
    """Where the inference form of this model's image tower is cached (timm towers only)."""
    if "timm_model_name" not in source.model_cfg.get("vision_cfg", {}):
        return None
    size = source.preprocess_cfg.get("size") or source.model_cfg["vision_cfg"].get("image_size")
    key = hash_key("image-tower", inference.FORM_VERSION, source.fingerprint, str(dtype), device.type,
                   size, torch.__version__)
    return cache_root() / "towers" / key / "tower.pt"


def _input_size(source: ModelSource) -> int:
    size = source.preprocess_cfg.get("size") or source.model_cfg["vision_cfg"].get("image_size")
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def _inference_form(source: ModelSource, visual: nn.Module, dtype: torch.dtype, device: torch.device,
                    path: Path | None) -> nn.Module:
    """The folded, traced tower (and cache it), or `visual` itself where that is not possible."""
    if path is None or not _convolutional(visual):
        return visual
    try:
        graph = inference.inference_tower(visual, _input_size(source), dtype).to(device)
    except Exception as e:  # untraceable tower: it runs as built
        log.info("image tower of %s kept as built (%s)", source.id, e)
        return visual
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        inference.save_tower(graph, path)
    except OSError as e:  # a read-only or full cache only costs the next run its start-up
        log.warning("cannot cache the image tower in %s: %s", path.parent, e)
        return graph
    return _onnx_tower(source, graph, dtype, device, path) or graph


def _onnx_tower(source: ModelSource, graph: nn.Module | None, dtype: torch.dtype, device: torch.device,
                path: Path) -> nn.Module | None:
    """The tower ONNX Runtime runs, from `tower.onnx` beside the cached graph (exported from
    `graph` when missing); None where the runtime does not run it here or the export fails (the
    torch graph then runs, as before)."""
    onnx, refused = path.with_name("tower.onnx"), path.with_name("tower.onnx-failed")
    if not inference.onnx_runs(device, dtype) or refused.is_file():
        return None
    try:
        if not onnx.is_file():
            if graph is None:
                return None
            inference.export_onnx(graph, _input_size(source), onnx)
        return inference.OnnxTower(onnx)
    except Exception as e:  # an operator the exporter or runtime lacks: torch runs it, and later runs do not retry
        log.info("image tower of %s stays with torch (ONNX Runtime: %s)", source.id, e)
        try:
            refused.write_text(f"{type(e).__name__}: {e}\n")
        except OSError:
            pass
        return None


def _masked_text_tower(net: nn.Module) -> bool:
    """A Hugging Face text tower masks padding, so its output does not depend on how far texts are padded."""
    text = getattr(net, "text", None)
    return text is not None and hasattr(text, "transformer") and hasattr(text, "pooler")


def _padded_to_longest(tokenizer):
    """open_clip's HF tokenizer pads every text to the context length; for a masked tower, padding
    to the batch's longest text gives the same features at a fraction of the cost."""
    from open_clip.tokenizer import HFTokenizer

    if not isinstance(tokenizer, HFTokenizer) or tokenizer.tokenizer_mode or tokenizer.strip_sep_token:
        return tokenizer

    def tokenize(texts: list[str]) -> torch.Tensor:
        return tokenizer.tokenizer([tokenizer.clean_fn(t) for t in texts], return_tensors="pt", padding="longest",
                                   truncation=True, max_length=tokenizer.context_length).input_ids
    return tokenize


def _make_tokenizer(source: ModelSource):
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    text_cfg = source.model_cfg.get("text_cfg", {})
    ctx = text_cfg.get("context_length", 77)
    kwargs = text_cfg.get("tokenizer_kwargs", {})
    if source.tokenizer_dir is not None:
        return HFTokenizer(str(source.tokenizer_dir), context_length=ctx, **kwargs)
    if "hf_tokenizer_name" in text_cfg:
        return HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=ctx, **kwargs)
    return SimpleTokenizer(context_length=ctx)


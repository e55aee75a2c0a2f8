"""Image preprocessing: a picklable description of how a model wants its pixels.

Worker processes receive an `ImagePreprocess` and turn decoded images into pixels, so the
main process only runs the model. The arithmetic is numpy's, single-threaded: torch's would
start an OpenMP team in every decoding thread of a server, and with more OpenMP threads than
cores libgomp stops spin-waiting, which made the model's own batches ~1.7x slower. It lives
with decoding, not with the models, and imports torch only to hand out tensors: a process that
only decodes (a Ray decode task, `ImagePreprocess.array`) never loads torch (~1.8 s and
~0.8 GB of a fresh process).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

__all__ = ["ImagePreprocess"]


def _to_tensor(img: Image.Image) -> "torch.Tensor":
    """torchvision's `to_tensor` for RGB images: [3, H, W] float32 in [0, 1]."""
    import torch

    return torch.from_numpy(_unit_pixels(img)).permute(2, 0, 1)


def _unit_pixels(img: Image.Image) -> np.ndarray:
    """[H, W, 3] float32 in [0, 1], as torchvision's `to_tensor` divides (IEEE float32 division)."""
    x = np.asarray(img.convert("RGB"), dtype=np.float32)
    return np.divide(x, np.float32(255), out=x if x.flags.writeable else None)

_PIL_FILTERS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class ImagePreprocess:
    """Resize policy, size and normalisation (the fields of open_clip's `PreprocessCfg`).

    `squash` resizes to size x size ignoring aspect (how BioCLIP's training shards were made);
    `shortest` resizes the shorter side and centre-crops (open_clip's default); `longest`
    fits the longer side and pads with `fill_color`.
    """

    size: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0

    @classmethod
    def from_config(cls, cfg: dict) -> "ImagePreprocess":
        size = cfg.get("size", 224)
        if isinstance(size, (list, tuple)):
            if len(set(size)) != 1:
                raise ValueError(f"non-square input size {size} is not supported")
            size = size[0]
        known = {k: cfg[k] for k in ("interpolation", "resize_mode", "fill_color") if cfg.get(k) is not None}
        return cls(size=int(size), mean=tuple(cfg.get("mean", cls.mean)), std=tuple(cfg.get("std", cls.std)), **known)

    def as_dict(self) -> dict:
        return asdict(self)

    def __call__(self, img: Image.Image) -> "torch.Tensor":
        """RGB PIL image -> normalised float32 tensor [3, size, size]."""
        import torch

        if self._resizes_tensor:
            # Resize the float tensor with antialiasing, exactly as pybioclip does, so that
            # fp32 scores agree with it to float rounding.
            import torchvision.transforms.functional as TF

            x = TF.resize(_to_tensor(img), [self.size, self.size], antialias=True)
            mean = torch.tensor(self.mean, dtype=x.dtype).view(3, 1, 1)
            std = torch.tensor(self.std, dtype=x.dtype).view(3, 1, 1)
            return x.sub_(mean).div_(std)
        return torch.from_numpy(self._normalised(img)).permute(2, 0, 1)

    def array(self, img: Image.Image) -> np.ndarray:
        """The same pixels as a numpy array [3, size, size]: without torch, unless the resize
        policy is pybioclip's float-tensor one (squash + bilinear)."""
        if self._resizes_tensor:
            return self(img).numpy()
        return self._normalised(img).transpose(2, 0, 1)

    @property
    def _resizes_tensor(self) -> bool:
        return self.resize_mode == "squash" and self.interpolation == "bilinear"

    def _normalised(self, img: Image.Image) -> np.ndarray:
        """PIL resizes (torchvision, and torch._dynamo behind it, ~2 s to import, is not needed);
        [size, size, 3] float32."""
        x = _unit_pixels(self._resize_pil(img))
        x -= np.asarray(self.mean, dtype=np.float32)
        x /= np.asarray(self.std, dtype=np.float32)
        return x

    def _resize_pil(self, img: Image.Image) -> Image.Image:
        s, filt = self.size, _PIL_FILTERS[self.interpolation]
        w, h = img.size
        if self.resize_mode == "squash":
            return img.resize((s, s), filt)
        if self.resize_mode == "longest":
            scale = s / max(w, h)
            img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), filt)
            canvas = Image.new("RGB", (s, s), (self.fill_color,) * 3)
            canvas.paste(img, ((s - img.width) // 2, (s - img.height) // 2))
            return canvas
        # shortest side to s, then centre crop (open_clip / torchvision semantics)
        scale = s / min(w, h)
        img = img.resize((max(s, round(w * scale)), max(s, round(h * scale))), filt)
        left, top = int(round((img.width - s) / 2.0)), int(round((img.height - s) / 2.0))
        return img.crop((left, top, left + s, top + s))

    def draft_size(self) -> tuple[int, int]:
        """The smallest decode size that loses nothing after resizing (for JPEG draft mode)."""
        return (self.size, self.size)

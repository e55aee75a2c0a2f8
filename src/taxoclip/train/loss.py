"""The objective: CLIP's symmetric InfoNCE over the global batch, for biology and replay pairs.

open_clip's `ClipLoss` does the work; features are always gathered *with* gradients
(`torch.distributed.nn.all_gather`), so that with DDP's gradient averaging the update equals
the one a single process would make on the whole global batch, with or without `local`
(each process scoring only its own rows against every column: less memory, same gradient).
Logits are computed in fp32 whatever the model's precision.
"""
from __future__ import annotations

import warnings

import torch
from open_clip.loss import ClipLoss

# open_clip gathers with torch.distributed.nn.all_gather (autograd-aware), which torch marks as
# deprecated in favour of functional collectives; it is what gives gathered features gradients.
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated")

__all__ = ["ContrastiveLoss"]


class ContrastiveLoss:
    """Biology loss + `replay_weight` x replay loss; returns (total, {"bio": …, "replay": …})."""

    def __init__(self, *, local: bool = True, rank: int = 0, world: int = 1, replay_weight: float = 1.0):
        kw = dict(local_loss=local and world > 1, gather_with_grad=True, cache_labels=True, rank=rank, world_size=world)
        self.bio = ClipLoss(**kw)
        self.replay = ClipLoss(**kw)
        self.replay_weight = replay_weight

    def __call__(self, feats: dict[str, torch.Tensor], logit_scale: torch.Tensor) -> tuple[torch.Tensor, dict]:
        scale = logit_scale.float()
        parts = {"bio": self.bio(feats["image"].float(), feats["text"].float(), scale)}
        total = parts["bio"]
        if "replay_image" in feats:
            parts["replay"] = self.replay(feats["replay_image"].float(), feats["replay_text"].float(), scale)
            total = total + self.replay_weight * parts["replay"]
        return total, parts

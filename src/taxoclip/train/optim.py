"""Optimisation: AdamW with BioCLIP's parameter groups, warm-up + cosine schedule, fp32 master weights.

Weight decay applies to matrices only: gains, biases, 1-d embeddings and the logit scale are
exempt (open_clip's rule: `ndim < 2` or a name with `bn`, `ln`, `bias`, `logit_scale`).
The learning rate is a pure function of the step, so resuming needs nothing but the step.
With `precision: bf16` the model computes in bf16 while the optimiser updates fp32 master
copies (`MasterWeights`), which keeps small updates from vanishing in bf16 rounding.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import OptimConfig

__all__ = ["param_groups", "make_optimizer", "lr_at", "set_lr", "MasterWeights", "no_decay"]


def no_decay(name: str, p: torch.Tensor) -> bool:
    return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def param_groups(named: list[tuple[str, torch.Tensor]], weight_decay: float) -> list[dict]:
    named = [(n, p) for n, p in named if p.requires_grad]
    return [
        {"params": [p for n, p in named if no_decay(n, p)], "weight_decay": 0.0, "names": [n for n, p in named if no_decay(n, p)]},
        {"params": [p for n, p in named if not no_decay(n, p)], "weight_decay": weight_decay,
         "names": [n for n, p in named if not no_decay(n, p)]},
    ]


def make_optimizer(named: list[tuple[str, torch.Tensor]], cfg: OptimConfig) -> torch.optim.AdamW:
    groups = [g for g in param_groups(named, cfg.weight_decay) if g["params"]]
    for g in groups:
        g.pop("names")
    fused = bool(cfg.fused) and _can_fuse([p for g in groups for p in g["params"]])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             fused=True if fused else None, foreach=None if fused else True)


def _can_fuse(params: list[torch.Tensor]) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        DTensor = ()
    return all(p.device.type in ("cpu", "cuda") and not isinstance(p, DTensor) for p in params)


def lr_at(step: int, total: int, cfg: OptimConfig) -> float:
    """Linear warm-up to `lr` over `warmup` steps, then cosine to `min_lr` (open_clip's `cosine_lr`)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, total - cfg.warmup)
    e = min(step - cfg.warmup, span)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * e / span)) * (cfg.lr - cfg.min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


class MasterWeights:
    """fp32 copies of low-precision parameters; the optimiser steps the copies.

    After backward, `to_master()` moves the bf16 gradients onto the fp32 copies; after the
    optimiser step, `to_model()` rounds the copies back into the model.
    """

    def __init__(self, named: list[tuple[str, nn.Parameter]]):
        self.model_params = [(n, p) for n, p in named if p.requires_grad]
        self.masters = [(n, nn.Parameter(p.detach().float().clone())) for n, p in self.model_params]

    def named(self) -> list[tuple[str, nn.Parameter]]:
        return self.masters

    @torch.no_grad()
    def to_master(self) -> None:
        model, master = [], []
        for (_, p), (_, m) in zip(self.model_params, self.masters):
            if p.grad is None:
                m.grad = None
                continue
            if m.grad is None:
                m.grad = torch.empty_like(m)
            model.append(p.grad)
            master.append(m.grad)
            p.grad = None
        if master:
            torch._foreach_copy_(master, model)

    @torch.no_grad()
    def to_model(self) -> None:
        torch._foreach_copy_([p for _, p in self.model_params], [m for _, m in self.masters])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: m.detach() for n, m in self.masters}

    @torch.no_grad()
    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        for n, m in self.masters:
            m.copy_(sd[n])
        self.to_model()

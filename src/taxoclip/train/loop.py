"""The training run: processes, precision, the optimiser step, logging, checkpoints, evaluation.

`train(cfg)` runs in every process `torchrun` starts (or alone). One optimiser step:

1. the step's text type is a function of (seed, step), identical on every process and
   data worker, so the whole global batch is captioned one way;
2. `optim.accum` micro-batches are embedded; the contrastive loss is always taken over the
   features of all of them and of all processes (open_clip's accumulation: a no-grad pass
   caches features, then each micro-batch is re-embedded with gradients against the cache),
   so the update equals one over the whole global batch;
3. gradients are averaged across processes (DDP, or FSDP's reduce-scatter), optionally
   clipped, the optimiser steps, and the logit scale is clamped to [0, ln 100].
"""
from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ..durable import DiskFull, is_disk_full
from .checkpoint import (LATEST, CheckpointError, find_checkpoint, load_checkpoint, rng_state, save_checkpoint,
                         set_rng_state)
from .config import ConfigError, TrainConfig, dumps, validate
from .data import Batch, count_samples, find_shards, make_loader, normalize_images
from .loss import ContrastiveLoss
from .model import BuiltModel, ContrastiveModule, build_model
from .optim import MasterWeights, lr_at, make_optimizer, set_lr

__all__ = ["train", "Trainer", "DistInfo", "init_distributed", "TrainResult"]

log = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
LOG_COLUMNS = ["step", "epoch", "samples", "lr", "loss", "loss_bio", "loss_replay", "text_type", "logit_scale",
               "samples_per_s", "elapsed_s"]


# ----- processes ----------------------------------------------------------------------------------
@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, …); NCCL on GPUs, gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    want_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but no GPU is available")
    dev = torch.device("cuda", local_rank) if want_cuda else torch.device("cpu")
    if want_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo", device_id=dev if want_cuda else None)
    return DistInfo(rank, world, local_rank, local_world, dev)


def _threads(cfg: TrainConfig, info: DistInfo) -> None:
    if info.device.type != "cpu" and not cfg.threads:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(cfg.threads or max(1, cores // max(1, info.local_world)))


# ----- precision ----------------------------------------------------------------------------------
class Precision:
    """What a precision name means: parameter dtype, compute dtype, autocast, scaler, masters."""

    def __init__(self, name: str, device: torch.device, fsdp: bool):
        self.name, self.device = name, device
        self.param_dtype = torch.bfloat16 if name in ("bf16", "pure_bf16") and not fsdp else torch.float32
        self.input_dtype = torch.bfloat16 if name in ("bf16", "pure_bf16") else torch.float32
        self.autocast_dtype = {"amp_bf16": torch.bfloat16, "fp16": torch.float16}.get(name)
        self.masters = name == "bf16" and not fsdp
        if fsdp and name == "pure_bf16":
            raise ConfigError("precision pure_bf16 is not supported with FSDP; use bf16 (FSDP mixed precision)")
        if name == "fp16" and device.type == "cpu":
            raise ConfigError("precision fp16 needs a GPU; on CPUs use bf16 or fp32")
        self.fsdp_mp = None
        if fsdp and name == "bf16":
            from torch.distributed.fsdp import MixedPrecisionPolicy

            self.fsdp_mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


# ----- the trainer ----------------------------------------------------------------------------------
class Trainer:
    """The model, optimiser and step of one process."""

    def __init__(self, cfg: TrainConfig, info: DistInfo, built: BuiltModel | None = None):
        self.cfg, self.info = cfg, info
        self.built = built or build_model(cfg.model, replay=cfg.data.replay_batch_size > 0, seed=cfg.seed)
        self.net = self.built.net
        self.precision = Precision(cfg.precision, info.device, cfg.model.fsdp)
        if cfg.model.grad_checkpointing:
            self.net.set_grad_checkpointing(True)
        self.net.to(info.device)
        self.memory_format = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
        self.net.visual.to(memory_format=self.memory_format)
        # fp32 masters are taken before the cast, so pretrained weights keep their fp32 values
        self.masters = MasterWeights(list(self.net.named_parameters())) if self.precision.masters else None
        if self.precision.param_dtype != torch.float32:
            self.net.to(self.precision.param_dtype)
            self.net.logit_scale.data = self.net.logit_scale.data.float()  # exp(ln 100) in bf16 is 98.9
        self.module = ContrastiveModule(self.net)
        self.wrapped = self._wrap(self.module)
        named = self.masters.named() if self.masters else list(self.net.named_parameters())
        self.optimizer = make_optimizer(named, cfg.optim)
        self.loss = ContrastiveLoss(local=cfg.loss.local, rank=info.rank, world=info.world,
                                    replay_weight=cfg.loss.replay_weight)
        pre = dict(self.built.preprocess_cfg)
        self.mean, self.std = tuple(pre.get("mean", OPENAI_MEAN)), tuple(pre.get("std", OPENAI_STD))
        self.step = 0

    def _wrap(self, module):
        cfg, info = self.cfg, self.info
        if cfg.model.fsdp:
            if info.world == 1:
                log.info("FSDP with one process: training unsharded")
            else:
                from torch.distributed.fsdp import fully_shard

                kw = {"mp_policy": self.precision.fsdp_mp} if self.precision.fsdp_mp else {}
                for m in module.modules():
                    if m.__class__.__name__ in ("ResidualAttentionBlock", "CustomResidualAttentionBlock"):
                        fully_shard(m, **kw)
                fully_shard(module, **kw)
                self.fsdp = True
                return self._compile(module)
        self.fsdp = False
        if info.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            module = DDP(module, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                         broadcast_buffers=False, gradient_as_bucket_view=True)
        return self._compile(module)

    def _compile(self, module):
        if not self.cfg.model.compile:
            return module
        if self.cfg.model.grad_checkpointing:
            torch._dynamo.config.optimize_ddp = False
        return torch.compile(module)

    @contextlib.contextmanager
    def inference_net(self):
        """The open_clip model with whole parameters, for evaluation (FSDP gathers its root's shards)."""
        if not self.fsdp:
            yield self.net
            return
        self.module.unshard()
        try:
            yield self.net
        finally:
            self.module.reshard()

    # ----- state ----------------------------------------------------------------------------------
    def model_state(self) -> dict[str, torch.Tensor]:
        """The full model weights (fp32 masters where they exist), on the CPU; collective under FSDP."""
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            sd = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            return {k.removeprefix("net."): v for k, v in sd.items()}
        sd = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        if self.masters:
            sd.update({k: v.cpu() for k, v in self.masters.state_dict().items()})
        return sd

    def optimizer_state(self) -> dict:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            return get_optimizer_state_dict(self.module, self.optimizer,
                                            options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return self.optimizer.state_dict()

    def load_state(self, ck: dict) -> None:
        model_sd, opt_sd = ck["model"], ck["optimizer"]
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                                 set_optimizer_state_dict)

            opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
            set_model_state_dict(self.module, {f"net.{k}": v for k, v in model_sd.items()}, options=opts)
            set_optimizer_state_dict(self.module, self.optimizer, opt_sd, options=opts)
        else:
            own = self.net.state_dict()
            with torch.no_grad():
                for k, v in own.items():
                    if k not in model_sd:
                        raise CheckpointError(f"checkpoint has no {k}; was it written by another model config?")
                    v.copy_(model_sd[k])
            if self.masters:
                self.masters.load_state_dict({k: model_sd[k] for k, _ in self.masters.named()})
            self.optimizer.load_state_dict(opt_sd)
        if self.precision.scaler is not None and ck.get("scaler"):
            self.precision.scaler.load_state_dict(ck["scaler"])
        self.step = int(ck["step"])

    # ----- one optimiser step ---------------------------------------------------------------------
    def _inputs(self, b: Batch) -> tuple:
        dev, dt = self.info.device, self.precision.input_dtype
        imgs = normalize_images(b.images, self.mean, self.std, dt, dev).contiguous(memory_format=self.memory_format)
        texts = b.texts.to(dev, non_blocking=True)
        if b.replay_images is None:
            return imgs, texts, None, None
        replay = normalize_images(b.replay_images, self.mean, self.std, dt, dev)
        return imgs, texts, replay.contiguous(memory_format=self.memory_format), b.replay_texts.to(dev, non_blocking=True)

    def _no_sync(self, last: bool):
        if last:
            if self.fsdp:
                self.wrapped.set_requires_gradient_sync(True)
            return contextlib.nullcontext()
        if self.fsdp:
            self.wrapped.set_requires_gradient_sync(False)
            return contextlib.nullcontext()
        return self.wrapped.no_sync() if hasattr(self.wrapped, "no_sync") else contextlib.nullcontext()

    def train_step(self, batches: list[Batch], lr: float) -> dict[str, torch.Tensor]:
        """Forward, backward and update for one optimiser step made of `batches` (micro-batches)."""
        prec = self.precision
        set_lr(self.optimizer, lr)
        self.wrapped.train()
        inputs = [self._inputs(b) for b in batches]
        n = len(inputs)
        cache = None
        if n > 1:  # features of every micro-batch, no gradients, used as the other columns
            with torch.no_grad(), prec.autocast():
                cache = [{k: v for k, v in self.module(*x).items() if k != "logit_scale"} for x in inputs]
        for j, x in enumerate(inputs):
            last = j == n - 1
            with self._no_sync(last):
                with prec.autocast():
                    out = self.wrapped(*x)
                    scale = out.pop("logit_scale")
                    if cache is not None:
                        out = {k: torch.cat([c[k] for c in cache[:j]] + [v] + [c[k] for c in cache[j + 1:]])
                               for k, v in out.items()}
                        if not last:  # the logit scale's gradient is taken once, in the synchronised pass
                            scale = scale.detach()
                    total, parts = self.loss(out, scale)
                if prec.scaler is not None:
                    prec.scaler.scale(total).backward()
                else:
                    total.backward()
        if self.masters:
            self.masters.to_master()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if prec.scaler is not None:
            if self.cfg.optim.grad_clip > 0:
                prec.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip)
            prec.scaler.step(self.optimizer)
            prec.scaler.update()
        else:
            if self.cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            if self.masters:
                dict(self.masters.named())["logit_scale"].clamp_(0, math.log(100))
                self.masters.to_model()
            else:
                self.net.logit_scale.clamp_(0, math.log(100))
        self.step += 1
        return {"loss": total.detach(), "loss_bio": parts["bio"].detach(),
                "loss_replay": parts["replay"].detach() if "replay" in parts else torch.zeros((), device=total.device),
                "logit_scale": _full(self.net.logit_scale.detach()).float().reshape(())}


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole value of a possibly sharded (FSDP DTensor) tensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


# ----- logging ------------------------------------------------------------------------------------------
class MetricsLog:
    """log.csv and eval.csv (one row per logged step / evaluation) and TensorBoard, on the main process."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool, resume_step: int):
        self.out, self.enabled = out, enabled
        self.tb = None
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        for name in ("log.csv", "eval.csv"):
            _truncate_csv(out / name, resume_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step or None)
            except ImportError:
                log.info("tensorboard is not installed; logging to CSV only")

    def _append(self, name: str, row: dict, columns: list[str]) -> None:
        path = self.out / name
        new = not path.exists() or path.stat().st_size == 0
        with open(path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: (f"{v:.9g}" if isinstance(v, float) else v) for k, v in row.items()})

    def train(self, row: dict) -> None:
        if not self.enabled:
            return
        self._append("log.csv", row, LOG_COLUMNS)
        if self.tb:
            s = row["step"]
            self.tb.add_scalar("train/loss", row["loss"], s)
            self.tb.add_scalar(f"train/loss_{row['text_type']}", row["loss_bio"], s)
            if row.get("loss_replay"):
                self.tb.add_scalar("train/loss_replay", row["loss_replay"], s)
            for k in ("lr", "logit_scale", "samples_per_s"):
                self.tb.add_scalar(f"train/{k}", row[k], s)

    def evaluation(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": step, **metrics}
        self._append("eval.csv", row, list(row))
        if self.tb:
            for k, v in metrics.items():
                self.tb.add_scalar(f"eval/{k}", v, step)
        log.info("step %d zero-shot: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def close(self) -> None:
        if self.tb:
            self.tb.close()


def _truncate_csv(path: Path, step: int) -> None:
    """Drop rows past `step` (a resumed run rewrites them) — or everything for a fresh run."""
    if not path.exists():
        return
    if step == 0:
        path.unlink()
        return
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return
    # A row cut short by a full disk or a kill has fewer cells: dropped with those past `step`.
    kept = [rows[0]] + [r for r in rows[1:] if len(r) == len(rows[0]) and r[0].isdigit() and int(r[0]) <= step]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        csv.writer(fh).writerows(kept)
    os.replace(tmp, path)


# ----- the run ----------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    out: Path
    steps: int
    last_loss: float
    eval: dict
    export: Path | None


def _total_steps(cfg: TrainConfig, info: DistInfo, shards) -> tuple[int, int]:
    """(optimiser steps, samples per epoch) from `steps` or `epochs`."""
    per_step = cfg.data.batch_size * info.world * cfg.optim.accum
    n = cfg.data.train_samples or shards.samples
    if cfg.steps > 0:
        return cfg.steps, n
    if not n:
        n = count_samples(shards)
    return max(1, math.ceil(cfg.epochs * n / per_step)), n


def _gather(obj, info: DistInfo) -> list:
    if info.world == 1:
        return [obj]
    out = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def _find_resume(resume: str | None, out: Path, info: DistInfo) -> dict | None:
    """The checkpoint to continue from: None for a fresh run (or `auto` with nothing saved yet)."""
    if not resume:
        return None
    try:
        path = find_checkpoint(resume, out)
    except CheckpointError:
        if resume != "auto":
            raise
        return None
    if info.main:
        log.info("resuming from %s", path)
    return load_checkpoint(path)


class _Window:
    """Throughput over the steps since the last log line (evaluations and saves left out)."""

    def __init__(self):
        self.t0 = self.start = time.perf_counter()
        self.steps = 0

    def restart(self) -> None:
        self.start, self.steps = time.perf_counter(), 0


def _log_row(trainer: Trainer, cfg: TrainConfig, info: DistInfo, done: int, last: dict, text_type: str,
             window: _Window, epoch_samples: int) -> dict:
    """One log.csv row; the losses are averaged over processes (each holds its local-loss share)."""
    vals = torch.stack([last["loss"].float(), last["loss_bio"].float(), last["loss_replay"].float()])
    if info.world > 1:
        dist.all_reduce(vals)
        vals /= info.world
    per_step = (cfg.data.batch_size + cfg.data.replay_batch_size) * info.world * cfg.optim.accum
    bio = cfg.data.batch_size * info.world * cfg.optim.accum
    now = time.perf_counter()
    return {"step": done, "epoch": done * bio / epoch_samples if epoch_samples else "",
            "samples": done * per_step, "lr": trainer.optimizer.param_groups[0]["lr"],
            "loss": vals[0].item(), "loss_bio": vals[1].item(), "loss_replay": vals[2].item(),
            "text_type": text_type, "logit_scale": last["logit_scale"].exp().item(),
            "samples_per_s": window.steps * per_step / max(now - window.start, 1e-9), "elapsed_s": now - window.t0}


def train(cfg: TrainConfig, resume: str | None = None) -> TrainResult:
    """Train (or continue training) as one process of a run; returns where the results are."""
    validate(cfg)
    info = init_distributed(cfg.device)
    _threads(cfg, info)
    out = Path(cfg.out)
    shards = find_shards(cfg.data.train, cfg.data.split)  # bad paths fail before the model is built
    if cfg.data.replay_batch_size:
        find_shards(cfg.data.replay)
    total, epoch_samples = _total_steps(cfg, info, shards)
    ck = _find_resume(resume, out, info)
    trainer = Trainer(cfg, info)
    random.seed(cfg.seed + info.rank)
    torch.manual_seed(cfg.seed + info.rank)
    if ck is not None:
        trainer.load_state(ck)
        states = ck.get("rng") or []
        if len(states) == info.world:  # another world size: fresh per-process seeds (data order is unaffected)
            set_rng_state(states[info.rank])
    start = trainer.step
    if info.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(dumps(cfg))
    loader = make_loader(cfg, rank=info.rank, world=info.world, tokenizer=trainer.built.tokenizer,
                         image_size=int(trainer.built.preprocess_cfg["size"]), start_micro=start * cfg.optim.accum,
                         start_positions=ck.get("data") if ck else None, pin_memory=info.device.type == "cuda",
                         shards=shards)
    metrics = MetricsLog(out, info.main, cfg.tensorboard, start)
    evaluator = _evaluator(cfg, trainer, info)
    preprocess_cfg = _export_preprocess(trainer)
    positions: dict = {}  # this process's streams only; merged across processes when saving
    eval_metrics: dict = {}
    last_loss = float("nan")
    kill_at = int(os.environ.get("TAXOCLIP_TEST_SIGKILL_AT_STEP", "0"))  # tests: die like a preempted job
    it = iter(loader)
    window = _Window()
    try:
        for step in range(start, total):
            if kill_at and step == kill_at:
                import signal

                os.kill(os.getpid(), signal.SIGKILL)
            batches = [next(it) for _ in range(cfg.optim.accum)]
            if batches[0].micro != step * cfg.optim.accum:
                raise RuntimeError(f"data out of step: micro-batch {batches[0].micro} at step {step}")
            last = trainer.train_step(batches, lr_at(step, total, cfg.optim))
            for name, d in batches[-1].positions.items():
                positions.setdefault(name, {}).update(d)
            window.steps += 1
            done = step + 1
            if done % cfg.log_every == 0 or done == total or done == start + 1:
                row = _log_row(trainer, cfg, info, done, last, batches[0].text_type, window, epoch_samples)
                last_loss = row["loss"]
                metrics.train(row)
                if info.main:
                    log.info("step %d/%d loss %.4f (%s) lr %.3g %.1f samples/s", done, total, row["loss"],
                             row["text_type"], row["lr"], row["samples_per_s"])
                window.restart()
            if evaluator and cfg.eval.every and done % cfg.eval.every == 0 and done != total:
                eval_metrics = _evaluate(evaluator, trainer)
                metrics.evaluation(done, eval_metrics)
                window.restart()
            if done % cfg.save_every == 0 or done == total:
                _save(trainer, cfg, info, out, positions, preprocess_cfg)
                window.restart()
        if evaluator:
            eval_metrics = _evaluate(evaluator, trainer)
            metrics.evaluation(total, eval_metrics)
        export = _export(trainer, cfg, info, out, preprocess_cfg) if cfg.export else None
    except Exception as e:
        if not is_disk_full(e):
            raise
        raise DiskFull(getattr(e, "path", None) or getattr(e, "filename", None) or out, _kept_checkpoint(out),
                       "free some space and re-run with --resume auto (or latest): it continues from there") from None
    finally:
        metrics.close()
        del it
    if info.world > 1:
        dist.barrier()
    return TrainResult(out, total, last_loss, eval_metrics, export)


def _kept_checkpoint(out: Path) -> str:
    """The checkpoint a stopped run continues from (what `--resume latest` finds)."""
    try:
        path = find_checkpoint(LATEST, out)
    except CheckpointError:
        return "no checkpoint yet (a re-run starts from step 0)"
    return f"the checkpoint {path} (step {int(path.stem.split('-')[-1])}), which --resume latest continues from"


def _export(trainer: Trainer, cfg: TrainConfig, info: DistInfo, out: Path, preprocess_cfg: dict) -> Path | None:
    state = trainer.model_state()  # collective under FSDP
    if not info.main:
        return None
    from .evaluate import load_taxa
    from .export import export_model

    taxa = load_taxa(cfg.export_vocabulary, cfg.data.train, cfg.data.split, [])
    return export_model(state, trainer.built.model_cfg, preprocess_cfg, out / "export", trainer.built.tokenizer_dir,
                        taxa=taxa, device=str(info.device))


def _evaluate(evaluator, trainer: Trainer) -> dict:
    with trainer.inference_net() as net:
        return evaluator(net, trainer.info.device, trainer.precision.input_dtype, trainer.precision.autocast)


def _evaluator(cfg: TrainConfig, trainer: Trainer, info: DistInfo):
    if not cfg.eval.data:
        return None
    from ..io.preprocess import ImagePreprocess
    from .evaluate import Evaluator

    pre = ImagePreprocess.from_config(_export_preprocess(trainer))
    return Evaluator(cfg.eval, pre, trainer.built.tokenizer, rank=info.rank, world=info.world,
                     train_shards=cfg.data.train, train_split=cfg.data.split)


def _export_preprocess(trainer: Trainer) -> dict:
    """How inference should prepare images for this model: as training saw them (squashed, no crop)."""
    pre = trainer.built.preprocess_cfg
    return {"size": int(pre["size"]), "mean": list(trainer.mean), "std": list(trainer.std),
            "interpolation": "bicubic", "resize_mode": "squash"}


def _save(trainer: Trainer, cfg: TrainConfig, info: DistInfo, out: Path, positions: dict, preprocess_cfg: dict) -> None:
    state = trainer.model_state()
    opt = trainer.optimizer_state()
    rngs = _gather(rng_state(), info)
    all_pos = _gather(positions, info)
    if info.main:
        merged: dict = {}
        for p in all_pos:
            for name, d in p.items():
                merged.setdefault(name, {}).update(d)
        scaler = trainer.precision.scaler
        payload = {
            "step": trainer.step, "model": state, "optimizer": opt,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "data": merged, "rng": rngs, "world": info.world,
            "meta": {"model_cfg": trainer.built.model_cfg, "preprocess_cfg": preprocess_cfg,
                     "tokenizer_dir": trainer.built.tokenizer_dir, "config": cfg.to_dict(),
                     "precision": cfg.precision},
        }
        path = save_checkpoint(out, trainer.step, payload, keep=cfg.keep)
        log.info("saved %s", path)
    if info.world > 1:
        dist.barrier()

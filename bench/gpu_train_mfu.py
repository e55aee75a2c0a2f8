"""BioCLIP 2's model on one GPU: samples/s and model FLOPs utilisation (MFU) of `taxoclip.train`.

Trains ViT-L/14 (bioclip2 recipe: bf16, gradient checkpointing, replay through
`visual.continual_proj`, local loss, AdamW) on synthetic data with the real training step
(`taxoclip.train.loop.Trainer.train_step`), at the largest per-GPU batch that fits up to the
reference's 2,816 biology + 320 replay images (keeping the 2816:320 ratio), for a few
hundred steps, and reports:

* samples/s (biology + replay images per second);
* model FLOPs per sample, counted by `torch.utils.flop_counter` on one forward+backward of
  the model without checkpointing (recomputation is not model FLOPs), checked against the
  analytic 6 x params x tokens count;
* MFU = samples/s x FLOPs per sample / the GPU's dense bf16 peak (H100/H200 SXM: 989 TFLOP/s).

    python bench/gpu_train_mfu.py                               # ViT-L/14, auto batch, 300 steps
    python bench/gpu_train_mfu.py --compile --steps 300 --json mfu.json
    python bench/gpu_train_mfu.py --tiny --device cpu --steps 3  # dry run of the script on a CPU

Never run by the tests. Results and the command go into docs/train.md.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch

PEAK_BF16_TFLOPS = {  # dense, no sparsity
    "H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0,
    "H100": 989.4, "GH200": 989.4, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0, "B200": 2250.0,
}


def peak_tflops(device: torch.device, override: float) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS.items():  # most specific names first
        if key in name:
            return value
    return None


def build(args, device):
    from taxoclip.train.config import load_config
    from taxoclip.train.loop import DistInfo, Trainer

    name = "taxoclip-tiny-vit" if args.tiny else args.model
    cfg = load_config(None, [
        "data.train=[synthetic]", "steps=1", f"model.name={name}", f"precision={args.precision}",
        f"model.grad_checkpointing={str(not args.no_grad_checkpointing).lower()}",
        f"model.compile={str(args.compile).lower()}", "data.replay=[synthetic]", "data.replay_batch_size=1",
        "optim.lr=1e-4", "optim.warmup=1875", "loss.local=true"])
    trainer = Trainer(cfg, DistInfo(device=device))
    return cfg, trainer


def batch(trainer, n_bio: int, n_replay: int, device, seed: int = 0):
    from taxoclip.train.data import Batch

    size = int(trainer.built.preprocess_cfg["size"])
    ctx = int(trainer.built.model_cfg["text_cfg"].get("context_length", 77))
    vocab = int(trainer.built.model_cfg["text_cfg"].get("vocab_size", 49408))
    g = torch.Generator(device=device).manual_seed(seed)
    img = lambda n: torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, device=device, generator=g)
    tok = lambda n: torch.randint(1, vocab - 1, (n, ctx), device=device, generator=g)
    return Batch(0, "taxon", img(n_bio), tok(n_bio), img(n_replay), tok(n_replay), {})


def flops_per_sample(trainer, device) -> tuple[float, float]:
    """(counted, analytic) training FLOPs per image-text pair (forward + backward, no recompute)."""
    from torch.utils.flop_counter import FlopCounterMode

    net = trainer.net
    net.set_grad_checkpointing(False)
    b = batch(trainer, 2, 0, device)
    x = trainer._inputs(b)
    counter = FlopCounterMode(display=False)
    with counter, trainer.precision.autocast():
        out = trainer.module(x[0], x[1])
        (out["image"].float().sum() + out["text"].float().sum()).backward()
    net.zero_grad(set_to_none=True)
    if trainer.masters:
        for _, m in trainer.masters.named():
            m.grad = None
    net.set_grad_checkpointing(trainer.cfg.model.grad_checkpointing)
    counted = counter.get_total_flops() / 2
    # analytic: 6 x (matmul params) x tokens per tower, plus attention's 12 x layers x width x tokens^2
    mc = trainer.built.model_cfg
    v, t = mc["vision_cfg"], mc["text_cfg"]
    def tower(width, layers, tokens, mlp_ratio):
        per_layer = (4 + 2 * mlp_ratio) * width * width
        return 6 * layers * per_layer * tokens + 12 * layers * width * tokens * tokens
    patches = (v["image_size"] // v["patch_size"]) ** 2
    analytic = tower(v["width"], v["layers"], patches + 1, v.get("mlp_ratio", 4.0)) \
        + 6 * 3 * v["patch_size"] ** 2 * v["width"] * patches \
        + tower(t["width"], t["layers"], t.get("context_length", 77), t.get("mlp_ratio", 4.0))
    return counted, analytic


def fits(trainer, n_bio, n_replay, device) -> bool:
    try:
        trainer.train_step([batch(trainer, n_bio, n_replay, device)], 1e-6)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return True
    except torch.OutOfMemoryError:
        trainer.optimizer.zero_grad(set_to_none=True)
        if trainer.masters:
            for (_, p), (_, m) in zip(trainer.masters.model_params, trainer.masters.masters):
                p.grad = m.grad = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-L-14")
    ap.add_argument("--tiny", action="store_true", help="the 2-layer test model (dry runs on a CPU)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "amp_bf16", "pure_bf16", "fp32"])
    ap.add_argument("--no-grad-checkpointing", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the training module")
    ap.add_argument("--bio", type=int, default=2816, help="largest biology batch to try")
    ap.add_argument("--replay", type=int, default=320, help="largest replay batch to try")
    ap.add_argument("--fixed-batch", action="store_true", help="use --bio/--replay as given, no search")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup-steps", type=int, default=10)
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="the device's dense bf16 peak (auto for known GPUs)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if args.tiny:
        args.bio, args.replay = min(args.bio, 64), min(args.replay, 8)

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg, trainer = build(args, device)
    counted, analytic = flops_per_sample(trainer, device)
    print(f"model {cfg.model.name}: {sum(p.numel() for p in trainer.net.parameters()) / 1e6:.1f}M parameters; "
          f"training FLOPs per pair {counted / 1e9:.1f} G counted, {analytic / 1e9:.1f} G analytic")

    # Largest batch that fits, keeping the reference's bio:replay ratio; a few fractions of it.
    fractions = [1.0] if args.fixed_batch else [1.0, 7 / 8, 3 / 4, 5 / 8, 1 / 2, 3 / 8, 1 / 4, 1 / 8, 1 / 16]
    chosen = None
    for f in fractions:
        n_bio, n_rep = max(1, round(args.bio * f)), max(1, round(args.replay * f))
        t = time.perf_counter()
        ok = fits(trainer, n_bio, n_rep, device)
        print(f"  batch {n_bio} + {n_rep}: {'fits' if ok else 'out of memory'} ({time.perf_counter() - t:.1f} s)")
        if ok:
            chosen = (n_bio, n_rep)
            break
    if chosen is None:
        raise SystemExit("not even the smallest batch fits")
    n_bio, n_rep = chosen
    b = batch(trainer, n_bio, n_rep, device, seed=1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup_steps):
        trainer.train_step([b], 1e-6)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        out = trainer.train_step([b], 1e-6)
    loss = out["loss"].item()
    sync()
    dt = time.perf_counter() - t0
    per_step = n_bio + n_rep
    sps = args.steps * per_step / dt
    achieved = sps * counted
    peak = peak_tflops(device, args.peak_tflops)
    result = {
        "model": cfg.model.name, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": args.precision, "grad_checkpointing": not args.no_grad_checkpointing, "compile": args.compile,
        "batch_bio": n_bio, "batch_replay": n_rep, "steps": args.steps, "step_s": dt / args.steps,
        "samples_per_s": sps, "train_flops_per_sample": counted, "train_flops_per_sample_analytic": analytic,
        "achieved_tflops": achieved / 1e12, "peak_bf16_tflops": peak,
        "mfu": achieved / (peak * 1e12) if peak else None, "final_loss": loss,
        "max_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    print(json.dumps(result, indent=2))
    mfu = f"{100 * result['mfu']:.1f}%" if result["mfu"] is not None else "n/a (unknown peak)"
    print(f"{result['device']}: batch {n_bio}+{n_rep}, {sps:.0f} samples/s, {achieved / 1e12:.1f} TFLOP/s, MFU {mfu}")
    if not math.isfinite(loss):
        raise SystemExit("loss is not finite")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()

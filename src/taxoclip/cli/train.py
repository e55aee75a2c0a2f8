"""`taxoclip train`: train a model from a recipe, or export a checkpoint for inference.

    taxoclip train run configs/butterflies-tiny.yaml out=runs/bf optim.lr=1e-3
    torchrun --nproc_per_node 8 -m taxoclip train run configs/bioclip2-vitl14.yaml --resume auto
    taxoclip train export runs/bf runs/bf-model
"""
from __future__ import annotations

import argparse

_RUN_HELP = """\
Overrides are dotted keys of the recipe, e.g. optim.lr=3e-4 data.batch_size=256
data.train=[a.tar,b.tar] steps=1000 out=runs/x. Multi-process: launch with torchrun
(torchrun --nproc_per_node N -m taxoclip train run RECIPE); see docs/train.md."""


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train or fine-tune a model (hierarchical contrastive, BioCLIP 2 recipe)",
                              description="Train a CLIP model on Tree-of-Life shards with BioCLIP 2's recipe.")
    sub = p.add_subparsers(dest="train_command", metavar="ACTION")
    r = sub.add_parser("run", help="train from a YAML recipe", description=_RUN_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("config", nargs="?", help="YAML recipe (see configs/); omitted = defaults + overrides")
    r.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (dotted keys)")
    r.add_argument("--resume", metavar="CKPT",
                   help="continue a run: 'latest' (in out/), 'auto' (latest if any, else start), or a checkpoint path")
    r.add_argument("--out", help="run directory (same as out=DIR)")
    r.add_argument("--steps", type=int, help="optimiser steps (same as steps=N)")
    r.add_argument("--local-loss", dest="local_loss", action="store_true", default=None,
                   help="score each process's rows against all gathered columns (the default)")
    r.add_argument("--no-local-loss", dest="local_loss", action="store_false",
                   help="every process computes the full global logit matrix")
    r.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    r.set_defaults(func=run)
    e = sub.add_parser("export", help="write a checkpoint as an open_clip model directory (no replay head)")
    e.add_argument("checkpoint", help="checkpoint file, run directory, or its checkpoints/ folder")
    e.add_argument("out_dir", help="output directory (open_clip_config.json + open_clip_model.safetensors)")
    e.add_argument("--vocabulary", default="train", metavar="TAXA",
                   help="the model's own vocabulary (embeddings/): 'train' (default: the taxa of the run's "
                        "training data), 'none', or a taxa table (CSV/Parquet with rank columns)")
    e.set_defaults(func=export)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def _split_args(args) -> tuple[str | None, list[str]]:
    """A lone KEY=VALUE in the config slot is an override, not a file."""
    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not config.endswith((".yaml", ".yml")):
        overrides.insert(0, config)
        config = None
    if args.out:
        overrides.append(f"out={args.out}")
    if args.steps is not None:
        overrides.append(f"steps={args.steps}")
    if args.local_loss is not None:
        overrides.append(f"loss.local={str(args.local_loss).lower()}")
    return config, overrides


def run(args) -> int:
    from ..train.config import dumps, load_config

    config, overrides = _split_args(args)
    cfg = load_config(config, overrides)
    if args.print_config:
        print(dumps(cfg))
        return 0
    from ..train.loop import train

    result = train(cfg, resume=args.resume)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        msg = f"trained {result.steps} steps; final loss {result.last_loss:.4f}; run in {result.out}"
        if result.eval:
            msg += f"; zero-shot species top-1 {100 * result.eval['top1_species']:.1f}% " \
                   f"(chance {100 * result.eval['chance']:.1f}%)"
        if result.export:
            msg += f"; model exported to {result.export}"
        print(msg)
    return 0


def export(args) -> int:
    from ..train.export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out_dir, vocabulary=args.vocabulary)
    print(f"exported {args.checkpoint} to {out}")
    return 0

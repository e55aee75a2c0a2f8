"""Options shared by several sub-commands (argparse only: imported when `taxoclip` starts)."""
from __future__ import annotations

import argparse

RANK_NAMES = ("kingdom", "phylum", "class", "order", "family", "genus", "species")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="taxoclip-mini",
                   help="model id: taxoclip-mini (default, bundled, offline), bioclip-2, bioclip, hf-hub:ORG/NAME, "
                        "a directory in the open_clip layout, or an open_clip name with --pretrained "
                        "(see `taxoclip list-models`)")
    g.add_argument("--pretrained", help="pretrained tag or weights file, for open_clip model names")
    g.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto (default): bf16 on CPUs with AMX/AVX512-BF16 and on GPUs that support it, else "
                        "fp32; fp32 reproduces pybioclip's scores to float rounding")


def add_run_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--batch-size", type=positive_int, default=None,
                   help="images per model call (default: 16 on a CPU, where larger batches run slower; 128 on a GPU)")
    g.add_argument("--workers", type=int, default=None,
                   help="image decoding processes (default: one per spare core, at most 4 when the model runs on the CPU, "
                        "32 on a GPU; 0 decodes in the main process)")
    g.add_argument("--compile", default="auto", choices=["auto", "yes", "no"],
                   help="compile the image tower: auto (default) does so for runs of 2,000+ images")
    g.add_argument("--output", "-o", default="stdout", help="output file (default: standard output)")


def start_loader(args: argparse.Namespace, command: str):
    """Start decoding the inputs of `predict`/`embed` while the model loads; report what was skipped.

    Returns (loader, problems); the loader is None when no image is left to do (exit status 2).
    """
    import sys

    from .. import classify

    loader, problems = classify.start_loader(args.image_file, model=args.model, pretrained=args.pretrained,
                                             device=args.device, precision=args.precision,
                                             batch_size=args.batch_size, workers=args.workers)
    for p in problems:
        print(f"taxoclip {command}: {p}", file=sys.stderr)
    return loader, problems

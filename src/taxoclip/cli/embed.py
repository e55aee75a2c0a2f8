"""`taxoclip embed`: photos -> embedding vectors in the model's joint image-text space."""
from __future__ import annotations

import argparse
import sys

from ._options import add_engine_options, add_model_options, add_run_options, run_with_engine, start_loader, wants_engine


def register(sub) -> None:
    p = sub.add_parser("embed", help="image embeddings (JSON as pybioclip, or JSON lines / Parquet)",
                       description="Compute image embeddings. JSON output matches pybioclip's `embed`.")
    p.add_argument("image_file", nargs="+", help="images, folders, globs, list files or .tar shards")
    p.add_argument("--format", choices=["json", "jsonl", "parquet"],
                   help="output format (default: from --output's extension, else json)")
    p.add_argument("--normalize", action="store_true", help="L2-normalise the vectors (pybioclip does not)")
    add_model_options(p)
    add_run_options(p)
    add_engine_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if wants_engine(args):
        from ..scale import EmbedTask  # light: torch is imported while Ray starts (`scale.run`)

        task = EmbedTask(model=args.model, pretrained=args.pretrained, precision=args.precision,
                         normalize=args.normalize)
        return run_with_engine(args, task, "embed")
    loader, problems = start_loader(args, "embed")  # first: it prepares a bundled model before torch is imported
    if loader is None:
        return 2
    from .. import classify
    from ..io.writers import format_for, open_writer

    embedder = classify.ImageEmbedder(args.model, pretrained=args.pretrained, device=args.device,
                                      precision=args.precision, batch_size=args.batch_size, workers=args.workers,
                                      compile=args.compile)
    fmt = format_for(args.output, args.format, default="json")
    extra = {"header": {"model": embedder.model_str}} if fmt == "json" else {}
    failed = 0
    with open_writer(fmt, args.output, ["file_name", "embedding", "error"], **extra) as writer:
        for name, vec, err in embedder.embed_iter(loader, normalize=args.normalize, progress=None):
            if err:
                failed += 1
                print(f"taxoclip embed: {name}: {err}", file=sys.stderr)
            writer.write([{"file_name": name, "embedding": None if vec is None else vec.tolist(), "error": err}])
    return 1 if failed or problems else 0

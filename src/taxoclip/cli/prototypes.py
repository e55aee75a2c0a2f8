"""`taxoclip prototypes`: add your species from a few photos each (a vocabulary of class prototypes)."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "prototypes", help="add your species from a few photos: build a vocabulary of class prototypes",
        description="Average each class's image embeddings into a prototype and write them as a vocabulary: "
                    "`taxoclip predict PHOTOS --vocabulary DIR` then predicts over your classes (and rolls up "
                    "where they have a taxonomy). Classes come from class folders (fox/1.jpg), a metadata.csv "
                    "(filepath, class or ranks) or webdataset shards with JSON labels.")
    cs = p.add_subparsers(dest="prototypes_command", metavar="STEP", required=True)
    b = cs.add_parser("build", help="build prototypes from labelled photos")
    b.add_argument("source", help="folder of class folders, a folder with metadata.csv, or shards")
    b.add_argument("--output", "-o", required=True, help="vocabulary folder to write")
    b.add_argument("--model", default="taxoclip-mini", help="model id (default: taxoclip-mini)")
    b.add_argument("--min-photos", type=int, default=1, help="refuse classes with fewer photos (default 1)")
    b.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..evaluate.prototypes import build_prototypes
    from ..models import load_model

    model = load_model(args.model, precision="fp32")
    folder, summary = build_prototypes(model, args.source, args.output, min_photos=args.min_photos)
    with_ranks = int((summary["genus"] != "").sum())
    print(f"taxoclip prototypes: {len(summary)} classes from {int(summary['photos'].sum())} photos "
          f"({with_ranks} with a taxonomy) -> {folder}; use: taxoclip predict PHOTOS --model {args.model} "
          f"--vocabulary {folder}", file=sys.stderr)
    return 0

"""`taxoclip merge`: the parts of a resumable run (`--output DIR/`), joined in input order."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("merge", help="join the parts of a `--output DIR/` run into one file",
                       description="Join the Parquet parts that `taxoclip predict|embed --output DIR/` wrote into one "
                                   "output, in input order. Refuses a run whose parts are not all done.")
    p.add_argument("folder", metavar="DIR", help="the run's --output directory")
    p.add_argument("--output", "-o", default="stdout", help="output file (default: standard output)")
    p.add_argument("--format", choices=["csv", "table", "jsonl", "parquet", "json"],
                   help="output format (default: from --output's extension, else csv; json for embeddings)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..scale import merge

    n = merge(args.folder, args.output, args.format)
    print(f"taxoclip merge: {n} rows", file=sys.stderr)
    return 0

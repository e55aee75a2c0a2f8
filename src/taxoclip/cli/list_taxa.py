"""`taxoclip list-taxa`: the taxa of a model's Tree-of-Life vocabulary, as CSV."""
from __future__ import annotations

import argparse
import sys

from ._options import RANK_NAMES


def register(sub) -> None:
    for name in ("list-taxa", "list-tol-taxa"):  # the second is pybioclip's name
        extra = {"help": "print the vocabulary's taxa as CSV"} if name == "list-taxa" else {}
        p = sub.add_parser(name, **extra,
                           description="Print the taxa of a Tree-of-Life vocabulary as CSV (pybioclip's "
                                       "list-tol-taxa columns); with --rank, the distinct taxa at that rank.")
        p.add_argument("--model", default="taxoclip-mini", help="model whose vocabulary to list (default taxoclip-mini)")
        p.add_argument("--vocabulary", help="a vocabulary to list instead (HF dataset id, directory or .npy)")
        p.add_argument("--rank", choices=RANK_NAMES, help="list distinct taxa at this rank, with counts")
        p.add_argument("--output", "-o", default="stdout", help="output file (default: standard output)")
        p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models import resolve_precision
    from ..textbank import TextBank

    bank = TextBank.from_published(args.vocabulary, model=args.model, dtype=resolve_precision("auto", "cpu"))
    df = bank.label_data()
    if args.rank:
        cols = list(RANK_NAMES[: RANK_NAMES.index(args.rank) + 1])
        if args.rank == "species":
            cols = [c for c in df.columns if c != "common_name"]
        df = df[df[args.rank] != ""].groupby(cols, sort=True).size().reset_index(name="count")
    out = sys.stdout if args.output in ("-", "stdout") else open(args.output, "w", encoding="utf-8", newline="")
    df.to_csv(out, index=False)
    if out is not sys.stdout:
        out.close()
    return 0

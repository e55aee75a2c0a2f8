"""The `taxoclip` command line: one sub-command per task, each a thin module in this package.

A sub-command module defines `register(subparsers)`, which adds its parser and sets
`func` to a `run(args) -> int` function. Modules here import only argparse at load time,
so `taxoclip --help` answers at once; the work is imported inside `run`.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .. import __version__
from ..errors import TaxoclipError

# Sub-command modules, in the order `--help` lists them.
COMMANDS = ["predict", "decide", "calibrate", "camtrap", "embed", "merge", "serve", "eval", "analyze", "prototypes", "index",
            "list_models", "list_taxa", "data", "train", "geo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taxoclip",
        description="Identify species across the tree of life from photos (BioCLIP 2), "
                    "build training data, train and evaluate models.")
    parser.add_argument("--version", action="version", version=f"taxoclip {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:  # a sub-command whose module is not written yet
            if e.name != f"{__name__}.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = [str(a) for a in argv] if argv is not None else sys.argv[1:]  # to re-run it (`scale.loopback`)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        if getattr(args, "engine", None) == "ray" or getattr(args, "address", None):  # under the loopback guard
            from ._options import confine_private_ray

            status = confine_private_ray(args)
            if status is not None:
                return status
        return int(args.func(args) or 0)
    except TaxoclipError as e:
        print(f"taxoclip {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `taxoclip predict … | head`
        sys.stderr.close()
        return 0
    except OSError as e:  # a full disk that no writer of ours met first (standard output on a full disk)
        from ..durable import is_disk_full

        if not is_disk_full(e):
            raise
        print(f"taxoclip {args.command}: error: no space left on the device writing "
              f"{e.filename or 'the output'}; free some space and re-run the same command", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

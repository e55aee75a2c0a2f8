"""`taxoclip data`: build Tree-of-Life training shards, and inspect or verify a built folder."""
from __future__ import annotations

import argparse

from ._options import add_decode_memory_option, add_engine_options


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {text}")
    return value


def register(sub) -> None:
    p = sub.add_parser("data", help="build training data (webdataset shards + catalog) from photo collections",
                       description="Build, inspect and verify Tree-of-Life training data.")
    cmds = p.add_subparsers(title="data commands", dest="data_command", metavar="DATA_COMMAND")

    b = cmds.add_parser(
        "build", help="build shards from shard sets, folders + tables and Darwin Core archives",
        description="Build deduplicated, leakage-free webdataset shards with the ten caption files, "
                    "catalog.parquet, stats.json and error/removal/unresolved reports. Inputs: webdataset shard "
                    "sets (.tar or a folder of them), CSV/TSV/Parquet tables with filepath or url (or a folder "
                    "holding one), Darwin Core Archives (.zip, or a folder with meta.xml). Re-run the same command "
                    "after an interruption to continue where it stopped.")
    b.add_argument("inputs", nargs="+", metavar="INPUT", help="shard sets, tables, image folders, DwC-A archives")
    b.add_argument("--out", required=True, help="output folder (new or empty, or an unfinished build to continue)")
    img = b.add_argument_group("images")
    img.add_argument("--size", type=_positive, default=224, help="output image size in pixels (default 224)")
    img.add_argument("--resize", choices=["squash", "shorter-side"], default="squash",
                     help="squash to SIZExSIZE (default, like the TreeOfLife shards) or shorter side to SIZE")
    img.add_argument("--min-side", type=_positive, default=224,
                     help="reject images whose shorter side is below this (default 224)")
    img.add_argument("--jpeg-quality", type=_positive, default=95, help="JPEG quality of output images (default 95)")
    dd = b.add_argument_group("deduplication and leakage")
    dd.add_argument("--exclude", nargs="+", default=[], metavar="EVAL",
                    help="evaluation sets (any input kind): training images copying them are removed")
    dd.add_argument("--exclude-threshold", type=_non_negative, default=10,
                    help="PDQ Hamming distance (of 256 bits) below which an image copies an evaluation image "
                         "(default 10; 0 turns the PDQ rule off)")
    dd.add_argument("--no-aligned-match", action="store_true",
                    help="turn off the crop-tolerant thumbnail rule of --exclude (PDQ and exact rules remain)")
    dd.add_argument("--dedup-threshold", type=_non_negative, default=10,
                    help="PDQ Hamming distance below which two images are near duplicates (default 10; 0: "
                         "exact duplicates only)")
    tx = b.add_argument_group("taxonomy")
    tx.add_argument("--backbone", action="append", default=[], metavar="NAME|TABLE",
                    help="fill missing ranks from a backbone: 'ncbi' (needs taxoclip[ncbi]) or a taxa table; "
                         "repeat to consult several in order")
    tx.add_argument("--taxa", help="taxa table to join a table's label column to")
    tx.add_argument("--label-column", default="label", help="label column joined to --taxa (default: label)")
    tx.add_argument("--keep-partial", action="store_true",
                    help="keep records whose kingdom could not be resolved (default: report them as unresolved)")
    out = b.add_argument_group("output")
    out.add_argument("--shard-size", type=_positive, default=10_000, help="samples per shard (default 10000)")
    out.add_argument("--splits", default="train=0.95,val=0.05",
                     help="split fractions by hash of source_id (default train=0.95,val=0.05)")
    out.add_argument("--split-from-source", action="store_true",
                     help="keep the split a source gives (a 'split' field, as bio-mini has) instead of hashing")
    out.add_argument("--overwrite", action="store_true", help="discard a previous or unfinished build in --out")
    run_ = b.add_argument_group("running")
    run_.add_argument("--workers", type=_non_negative, help="worker processes (default: one per core; 0: none)")
    add_decode_memory_option(run_, "an image that needs more becomes an error record")
    run_.add_argument("--checkpoint-every", type=_positive, default=2000,
                      help="records between checkpoints (default 2000)")
    run_.add_argument("--concurrency", type=_positive, default=16, help="HTTP downloads in flight (default 16)")
    run_.add_argument("--per-host-rate", type=float, default=None,
                      help="HTTP requests per second to one host (default: the fetcher's polite default)")
    run_.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP attempt (default 30)")
    run_.add_argument("--retries", type=_non_negative, default=2, help="HTTP retries on 429/5xx/timeouts (default 2)")
    run_.add_argument("--allow-private-addresses", action="store_true",
                      help="also download from loopback, link-local and private addresses (an intranet server, a "
                           "test server); by default an archive's URLs may only lead to public addresses")
    run_.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                      help="show a progress bar (default: when stderr is a terminal)")
    add_engine_options(b, parts=False)
    b.set_defaults(func=run, data_func=_build)

    s = cmds.add_parser("stats", help="counts per split, kingdom, rank and source; images-per-taxon histogram")
    s.add_argument("folder", metavar="DIR", help="a built dataset folder")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(func=run, data_func=_stats)

    v = cmds.add_parser("verify", help="check every shard is readable and the catalog matches the shards")
    v.add_argument("folder", metavar="DIR", help="a built dataset folder")
    v.add_argument("--no-decode", action="store_true", help="do not decode images (faster)")
    v.set_defaults(func=run, data_func=_verify)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def run(args: argparse.Namespace) -> int:
    return args.data_func(args)


def _build(args: argparse.Namespace) -> int:
    import sys

    from ..data.build import BuildConfig, BuildOptions, build
    from ..data.imaging import ImageSpec
    from ..data.leakage import AlignedMatch
    from ..data.sources import SourceOptions
    from ..data.splits import SplitRule

    config = BuildConfig(
        image=ImageSpec(size=args.size, resize=args.resize, min_side=args.min_side, quality=args.jpeg_quality),
        shard_size=args.shard_size, splits=SplitRule.parse(args.splits), split_from_source=args.split_from_source,
        dedup_threshold=args.dedup_threshold, exclude_threshold=args.exclude_threshold,
        aligned=None if args.no_aligned_match else AlignedMatch(), backbones=tuple(args.backbone),
        keep_partial=args.keep_partial, source=SourceOptions(taxa=args.taxa, label_column=args.label_column))
    fetch = {"concurrency": args.concurrency, "timeout": args.timeout, "retries": args.retries}
    if args.per_host_rate is not None:
        fetch["per_host_rate"] = args.per_host_rate if args.per_host_rate > 0 else None
    if args.allow_private_addresses:
        fetch["allow_private_addresses"] = True
    options = BuildOptions(workers=args.workers, checkpoint_every=args.checkpoint_every, progress=args.progress,
                           overwrite=args.overwrite, fetch=fetch, max_decode_memory=args.max_decode_memory)
    if args.engine == "ray" or args.address:  # a private instance runs confined (`cli.main`)
        from ..scale.ray_engine import build_on_ray

        stats = build_on_ray(args.inputs, args.out, exclude=args.exclude, config=config, options=options,
                             address=args.address, workers=args.num_workers)
    else:
        stats = build(args.inputs, args.out, exclude=args.exclude, config=config, options=options)
    counts = stats.get("build", {}).get("counts", {})
    print(f"{args.out}: {counts.get('written', stats.get('images', 0))} images written in {stats.get('shards', 0)} "
          f"shards; {counts.get('errors', 0)} errors, {counts.get('removed', 0)} removed, "
          f"{counts.get('unresolved', 0)} unresolved (see errors.csv, removed.csv, unresolved.csv)", file=sys.stderr)
    return 0


def _stats(args: argparse.Namespace) -> int:
    import json

    from ..data.stats import format_stats, load_stats
    from ..errors import InputError

    try:
        stats = load_stats(args.folder)
    except FileNotFoundError:
        raise InputError(f"{args.folder}: no catalog.parquet (not a built dataset)") from None
    print(json.dumps(stats, indent=1) if args.json else format_stats(stats))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ..data.verify import verify

    report = verify(args.folder, decode=not args.no_decode)
    print(report.summary())
    return 0 if report.ok else 1

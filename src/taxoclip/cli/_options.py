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


def byte_size(text: str) -> int:
    from ..io.budget import parse_bytes  # imported only when the option is given

    try:
        return parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_decode_memory_option(g, refused: str) -> None:
    g.add_argument("--max-decode-memory", type=byte_size, default=None, metavar="SIZE",
                   help="memory all decoding workers together may spend on giant images, e.g. 4GB or 500MB "
                        f"(default: half of the memory available at start); {refused}")


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
    add_decode_memory_option(g, "a photo that needs more becomes an error row")
    g.add_argument("--compile", default="auto", choices=["auto", "yes", "no"],
                   help="compile the image tower: auto (default) does so for runs of 2,000+ images")
    g.add_argument("--output", "-o", default="stdout", help="output file (default: standard output)")


def start_loader(args: argparse.Namespace, command: str):
    """Start decoding the inputs of `predict`/`embed` while the model loads; report what was skipped.

    Returns (loader, problems); the loader is None when no image is left to do (exit status 2).
    """
    import sys

    from ..warmup import prepare_bundled

    # before torch is imported here; texts (custom labels, a taxa table) need open_clip in this process anyway
    prepare_bundled(args.model, device=args.device, precision=args.precision,
                    text=any(getattr(args, name, None) for name in ("cls", "bins", "taxa")))
    from .. import classify

    loader, problems = classify.start_loader(args.image_file, model=args.model, pretrained=args.pretrained,
                                             device=args.device, precision=args.precision,
                                             batch_size=args.batch_size, workers=args.workers,
                                             max_decode_memory=args.max_decode_memory)
    for p in problems:
        print(f"taxoclip {command}: {p}", file=sys.stderr)
    return loader, problems


def add_decision_options(p: argparse.ArgumentParser, *, predict: bool) -> None:
    """Options of the decision rule (`predict` and `decide` share them, so they mean the same)."""
    g = p.add_argument_group("decisions" + (" (any of these adds prediction, prediction_rank, prediction_score, "
                                             "prediction_source and note columns)" if predict else ""))
    if predict:
        g.add_argument("--decide", action="store_true",
                       help="answer each photo at the deepest rank the model is sure of (default thresholds)")
        g.add_argument("--scores", metavar="FILE.parquet",
                       help="store what any later decision needs, for `taxoclip decide` (no model needed then)")
        g.add_argument("--candidates", type=positive_int, default=None,
                       help="species stored per photo (default 20); groups per higher rank: --groups (default 5)")
        g.add_argument("--groups", type=positive_int, default=None, help=argparse.SUPPRESS)
        g.add_argument("--calibration", default="auto", metavar="auto|none|FILE",
                       help="temperature for decision scores: auto (default) uses the model's stored calibration "
                            "(`taxoclip calibrate`; shipped for taxoclip-mini), none the raw scores")
    g.add_argument("--threshold", metavar="T",
                   help="probability a rank needs: one value for every rank, or e.g. species=0.85,genus=0.75 "
                        "(ranks not named keep their defaults; see docs/decisions.md)")
    g.add_argument("--taxon-thresholds", metavar="CSV", help="per-taxon thresholds: columns rank, taxon, threshold")
    g.add_argument("--context", metavar="CSV",
                   help="where and when photos were taken: file column (filepath/file_name) and any of latitude, "
                        "longitude, country, admin1, site, deployment, datetime (else EXIF GPS and time)")
    g.add_argument("--prior", action="append", metavar="FILE",
                   help="range data for a location prior (repeatable): a SpeciesNet geofence JSON, a presence "
                        "table from `taxoclip geo build`, or a checklist CSV")
    g.add_argument("--prior-mode", choices=["mask", "soft"], default="mask",
                   help="mask (default): taxa absent at the photo's place are removed; soft: down-weighted by "
                        "--prior-weight. Taxa without range data are never removed")
    g.add_argument("--prior-weight", type=float, default=0.1, help="weight of absent taxa with --prior-mode soft")
    g.add_argument("--events", action="store_true",
                   help="group photos into events (same deployment or folder, at most --event-gap seconds apart) "
                        "and decide once per event")
    g.add_argument("--event-gap", type=float, default=60.0, help="seconds between photos of one event (default 60)")
    g.add_argument("--events-output", metavar="FILE", help="also write one row per event here")


def wants_decisions(args: argparse.Namespace) -> bool:
    return bool(args.decide or args.scores or args.threshold or args.taxon_thresholds or args.prior or args.events
                or args.context or args.events_output)


def add_engine_options(p: argparse.ArgumentParser, *, parts: bool = True) -> None:
    """`--engine local|ray` and the Ray cluster's options (predict, embed, data build)."""
    g = p.add_argument_group("engine (long runs)" if parts else "engine")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local (default): this machine; ray: a Ray cluster (--address), or a private Ray instance "
                        "on this machine's loopback when no address is given")
    g.add_argument("--address", help="Ray cluster address (e.g. 10.0.0.5:6379, or 'auto' for the one `ray start` "
                                     "began here); implies --engine ray")
    g.add_argument("--num-workers", type=positive_int, help="Ray: model actors (default: one per GPU with --gpus-per-worker, else one per node)" if parts
                   else "Ray: worker actors (default: one per CPU of the cluster)")
    if parts:
        g.add_argument("--gpus-per-worker", type=float, default=0, help="Ray: GPUs per model actor (default 0: CPU)")
        g.add_argument("--part-size", type=positive_int, default=None,
                       help="photos per resumable part with --output DIR/ (default 10000)")


def wants_engine(args: argparse.Namespace) -> bool:
    """Whether the run goes through `taxoclip.scale` (resumable parts, or Ray)."""
    from ..scale.parts import is_part_dir_target

    return args.engine == "ray" or bool(args.address) or is_part_dir_target(getattr(args, "output", None))


def confine_private_ray(args: argparse.Namespace) -> int | None:
    """A private Ray instance, or a head started under the guard on this machine's loopback
    (`--address 127.0.0.1:PORT`), must be driven from a process under the guard
    (`scale.loopback`): re-run this command so, unless it already is. Returns the exit status
    of that re-run, or None to go on here. `cli.main` calls it before a command starts, so the
    work before Ray starts is done once, in the re-run."""
    from ..scale.loopback import is_loopback_address, run_confined, should_confine

    if args.engine != "ray" and not args.address:
        return None
    if args.address and not is_loopback_address(args.address):
        return None  # a cluster's driver keeps the network settings of its cluster
    if not should_confine():
        return None
    return run_confined(args.argv)


def run_with_engine(args: argparse.Namespace, task, command: str) -> int:
    """predict/embed through `taxoclip.scale`: parts in `--output DIR/`, or in `OUT.parts/`
    merged into `--output OUT` at the end (so a file output is resumable too)."""
    import shutil
    import sys

    from ..errors import InputError
    from ..scale import DEFAULT_PART_SIZE, merge, run
    from ..scale.parts import is_part_dir_target

    if args.address:
        args.engine = "ray"
    output = args.output
    if output in (None, "-", "stdout"):
        raise InputError("--engine ray writes resumable parts: give --output DIR/ (or a file, e.g. -o out.csv)")
    into_file = not is_part_dir_target(output)
    folder = f"{output}.parts/" if into_file else output
    report = run(task, args.image_file, folder, engine=args.engine, part_size=args.part_size or DEFAULT_PART_SIZE,
                 device=args.device, batch_size=args.batch_size, workers=args.workers, address=args.address,
                 num_workers=args.num_workers, gpus_per_worker=args.gpus_per_worker, progress=None)
    for p in report.problems:
        print(f"taxoclip {command}: {p}", file=sys.stderr)
    for name, err in report.first_errors:
        print(f"taxoclip {command}: {name}: {err}", file=sys.stderr)
    print(f"taxoclip {command}: {report.summary()}", file=sys.stderr)
    if into_file:
        merge(folder, output, args.format)
        shutil.rmtree(folder)
    return 1 if report.errors or report.problems else 0

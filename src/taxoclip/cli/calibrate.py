"""`taxoclip calibrate`: a temperature for a model's probabilities, fitted on labelled photos."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "calibrate", help="fit a temperature so the model's probabilities match its accuracy",
        description="Fit a temperature on labelled photos (a folder with metadata.csv, or webdataset shard "
                    "sets such as bio-mini), report NLL, expected calibration error and a reliability table "
                    "before and after on held-out photos, and store it with the model's id: decisions "
                    "(`predict --decide`, `decide`) use it from then on.")
    p.add_argument("dataset", nargs="+", help="labelled datasets")
    p.add_argument("--model", default="taxoclip-mini", help="model id (default: taxoclip-mini)")
    p.add_argument("--vocabulary", help="vocabulary to calibrate over (default: the model's own)")
    p.add_argument("--split", action="append", help="shard split(s) to use (default: val)")
    p.add_argument("--output", "-o", help="also write the calibration here (JSON)")
    p.add_argument("--no-store", action="store_true", help="do not store it with the model in the cache")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..decide.calibration import calibration_path
    from ..evaluate.calibrate import calibrate

    cal = calibrate(args.model, args.dataset, vocabulary=args.vocabulary, splits=args.split or ["val"],
                    progress=None)
    print(f"temperature {cal.temperature:.4f} (fitted on {cal.photos_fit} photos of {', '.join(cal.datasets)}; "
          f"checked on {cal.photos_held_out} others)")
    print("| | temperature | NLL | ECE | top-1 |\n|---|---:|---:|---:|---:|")
    for key, r in cal.held_out.items():
        print(f"| {key} | {r['temperature']:.3f} | {r['nll']:.3f} | {r['ece']:.3f} | {r['accuracy']:.3f} |")
    print("\nreliability on held-out photos (before -> after): bin, photos, confidence, accuracy")
    for b, a in zip(cal.held_out["before"]["reliability"], cal.held_out["after"]["reliability"]):
        fmt = lambda r: f"{r['photos']:5d} {r['confidence'] or 0:.3f} {r['accuracy'] or 0:.3f}"  # noqa: E731
        print(f"  {b['bin']}: {fmt(b)}  ->  {fmt(a)}")
    if not args.no_store:
        print(f"stored: {cal.save(calibration_path(cal.model, cal.weights_hash))}")
    if args.output:
        cal.save(args.output)
    return 0

"""`taxoclip camtrap`: camera-trap frames -> detections -> species, in the ecosystem's formats."""
from __future__ import annotations

import argparse
import sys

from ._options import add_decision_options, add_model_options


def register(sub) -> None:
    p = sub.add_parser("camtrap", help="camera traps: detect, classify every animal, MegaDetector JSON / Camtrap DP",
                       description="Camera-trap pipelines: detect animals, people and vehicles, classify each animal "
                                   "over the open Tree-of-Life vocabulary, answer each frame, and write MegaDetector "
                                   "batch JSON 1.6, Camtrap DP 1.0 and Darwin Core.")
    cs = p.add_subparsers(dest="camtrap_command", metavar="STEP", required=True)
    run = cs.add_parser("run", help="detect + classify image files or folders in one go")
    run.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    run.add_argument("--detector", default="yolox-tiny",
                     help="yolox-tiny (default: bundled, offline) or megadetector (with --detector-weights)")
    run.add_argument("--detector-weights", help="weights file for --detector megadetector")
    run.add_argument("--detection-threshold", type=float,
                     help="detections below this are not written (default: the detector's conservative threshold, "
                          "0.02 for yolox-tiny; MegaDetector's own for its weights, 0.05 for v5)")
    run.set_defaults(func=_run)
    cl = cs.add_parser("classify", help="classify the detections of a MegaDetector batch file")
    cl.add_argument("md_json", help="MegaDetector batch output (format 1.1-1.6)")
    cl.add_argument("--images", required=True, help="folder the file's image paths are relative to")
    cl.set_defaults(func=_classify)
    for q in (run, cl):
        q.add_argument("--output", "-o", required=True, help="MegaDetector batch JSON 1.6 with classifications")
        q.add_argument("--classify-threshold", type=float,
                       help="detections at or above this are classified and count for the frame (default: the "
                            "detector's typical threshold: 0.05 for yolox-tiny, 0.2 for MegaDetector v5; for "
                            "classify, the file's typical_detection_threshold, else 0.2)")
        q.add_argument("--crop-padding", type=float, default=0.05, help="square crop padding, share of the box side")
        q.add_argument("--vocabulary", help="Tree-of-Life vocabulary instead of the model's own, e.g. prototypes "
                                            "from `taxoclip prototypes build`")
        q.add_argument("--subset", help="CSV whose first column is named after a rank: classify only among those taxa")
        q.add_argument("--cls", help="custom labels instead of taxa: comma-separated, or a file with one per line "
                                     "(a box is answered by its best label when it reaches the species threshold)")
        q.add_argument("--bins", help="CSV of label,bin: custom labels, each box answered by its best bin")
        q.add_argument("--camtrap-dp", metavar="DIR", help="also write a Camtrap DP 1.0 package here")
        q.add_argument("--dwc", metavar="FILE", help="also write Darwin Core occurrences (.csv, or .zip for an archive)")
        q.add_argument("--calibration", default="auto", help="auto (default), none or a calibration file")
        add_model_options(q)
        add_decision_options(q, predict=False)


def _classifier(args):
    from .. import classify
    from ..decide.calibration import load_calibration
    from ..errors import InputError
    from ..textbank import read_bins_csv
    from .predict import _classes

    common = dict(model=args.model, pretrained=args.pretrained, device=args.device, precision=args.precision)
    if args.cls or args.bins:
        if args.cls and args.bins:
            raise InputError("--cls and --bins cannot be combined")
        if args.vocabulary or args.subset or args.prior:
            raise InputError("--cls/--bins choose custom labels, which have no taxa; they cannot be combined with "
                             "--vocabulary, --subset or --prior")
        if args.cls:
            return classify.CustomLabelsClassifier(_classes(args.cls), **common)
        return classify.CustomLabelsBinningClassifier(read_bins_csv(args.bins), **common)
    clf = classify.TreeOfLifeClassifier(common.pop("model"), vocabulary=args.vocabulary, **common)
    if args.subset:
        clf.restrict(args.subset)
    cal = load_calibration(clf.model, args.calibration)
    if cal is not None:
        clf.temperature = cal.temperature
    return clf


def _common(args):
    from ..camtrap import CropOptions
    from ..decide.context import read_context
    from ..decide.options import policy_from_options

    policy = policy_from_options(args.threshold, args.taxon_thresholds, args.prior, args.prior_mode,
                                 args.prior_weight)
    options = CropOptions(threshold=args.classify_threshold, padding=args.crop_padding)
    context = read_context(args.context) if args.context else None
    return policy, options, context


def _run(args: argparse.Namespace) -> int:
    from ..camtrap import run_images
    from ..camtrap.detector import load_detector

    detector = load_detector(args.detector, weights=args.detector_weights, device=args.device)
    clf = _classifier(args)
    policy, options, context = _common(args)
    frames, root = run_images(args.images, clf, detector, policy=policy, options=options,
                              detection_threshold=args.detection_threshold, context=context, events=args.events,
                              gap=args.event_gap)
    detector_info = {"name": detector.name, "version": detector.version, "metadata": detector.metadata}
    return _write(args, frames, root, clf, policy, detector_info)


def _classify(args: argparse.Namespace) -> int:
    from ..camtrap import classify_md
    from ..camtrap.mdjson import read_md_json

    md = read_md_json(args.md_json, images_root=args.images)  # a file it cannot read stops before the model loads
    clf = _classifier(args)
    policy, options, context = _common(args)
    frames, meta = classify_md(md, args.images, clf, policy=policy, options=options, context=context,
                               events=args.events, gap=args.event_gap)
    info = meta.get("info", {}) if isinstance(meta, dict) else {}
    return _write(args, frames, args.images, clf, policy, {"name": info.get("detector", "unknown"),
                                                           "metadata": info.get("detector_metadata")})


def _write(args, frames, root, clf, policy, detector_info) -> int:
    from ..camtrap.mdjson import write_md_json
    from ..decide.provenance import model_identity, run_record, vocabulary_identity, write_beside

    classifier = {"model": model_identity(clf.model), "vocabulary": vocabulary_identity(clf.bank),
                  "temperature": getattr(clf, "temperature", 1.0), "decision": policy.as_dict()}
    write_md_json(frames, args.output, detector=detector_info, classifier=classifier)
    write_beside(args.output, run_record(**classifier, detector=detector_info, images=str(root)))
    if args.camtrap_dp:
        from ..camtrap.camtrapdp import write_camtrap_dp

        untimed = [f.file for f in frames if not f.datetime and not f.failure]
        if untimed:  # Camtrap DP media need a timestamp; the MD JSON above has them all
            print(f"taxoclip camtrap: {len(untimed)} frames without a time (no EXIF DateTimeOriginal, no datetime "
                  f"column) are left out of the Camtrap DP package, e.g. {untimed[0]}", file=sys.stderr)
        write_camtrap_dp(frames, args.camtrap_dp, classifier=clf.model.id, images_root=root, missing_time="skip")
    if args.dwc:
        from ..camtrap.dwc import write_dwc_occurrences, write_dwca

        writer = write_dwca if args.dwc.endswith(".zip") else write_dwc_occurrences
        writer(frames, args.dwc, model=clf.model.id, vocabulary=classifier["vocabulary"]["name"])
    failed = [f for f in frames if f.failure]
    for f in failed[:10]:
        print(f"taxoclip camtrap: {f.file}: {f.failure}", file=sys.stderr)
    counts: dict[str, int] = {}
    for f in frames:
        key = f.answer.label if f.answer and f.answer.label in ("blank", "human", "vehicle", "animal") else \
            ("failed" if f.failure else "identified")
        counts[key] = counts.get(key, 0) + 1
    print(f"taxoclip camtrap: {len(frames)} frames: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())),
          file=sys.stderr)
    return 1 if failed else 0

"""`taxoclip predict`: photos -> species (or any rank, or your labels) with scores."""
from __future__ import annotations

import argparse
import sys

from ._options import (RANK_NAMES, add_decision_options, add_engine_options, add_model_options, add_run_options,
                       positive_int, run_with_engine, start_loader, wants_decisions, wants_engine)


def register(sub) -> None:
    p = sub.add_parser(
        "predict", help="identify the taxa in photos (species or any rank, or custom labels)",
        description="Identify the taxa in photos. Inputs may be image files, folders (searched recursively), "
                    "globs, .txt/.csv lists of paths (`filepath` column) and webdataset .tar shards. "
                    "Unreadable images become rows with an `error` and the run goes on.")
    p.add_argument("image_file", nargs="+", help="images, folders, globs, list files or .tar shards")
    what = p.add_argument_group("what to predict")
    what.add_argument("--rank", choices=RANK_NAMES, help="rank of the prediction (default: species)")
    what.add_argument("--k", type=positive_int, help="number of predictions per image (default 5; all labels with --cls)")
    what.add_argument("--min-prob", type=float, default=1e-9,
                      help="species probabilities at or below this are left out of higher-rank sums (default 1e-9)")
    what.add_argument("--subset", help="CSV whose first column is named after a rank: predict only among those taxa")
    what.add_argument("--cls", help="custom labels: comma-separated, or a text file with one label per line")
    what.add_argument("--bins", help="CSV of label,bin: predict labels, report the summed probability per bin")
    what.add_argument("--vocabulary", help="Tree-of-Life vocabulary to use instead of the model's own "
                                           "(HF dataset id, directory or txt_emb_species.npy)")
    what.add_argument("--taxa", help="build the vocabulary from this taxa table (CSV/Parquet with rank columns "
                                     "and common_name) instead of the published one")
    what.add_argument("--prototypes", help="add your classes from `taxoclip prototypes build` to the vocabulary "
                                           "(one softmax; prototype scores scaled to compete with text ones)")
    what.add_argument("--prototype-scale", type=float,
                      help="with --prototypes: the factor on prototype cosines instead of the calibrated one "
                           "(higher favours your classes; see docs/evaluate.md)")
    p.add_argument("--format", choices=["csv", "table", "jsonl", "parquet"],
                   help="output format (default: from --output's extension, else csv)")
    add_model_options(p)
    add_run_options(p)
    add_decision_options(p, predict=True)
    add_engine_options(p)
    p.set_defaults(func=run)


def _classes(arg: str) -> list[str]:
    import os

    if os.path.isfile(arg):
        with open(arg, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    return [c.strip() for c in arg.split(",") if c.strip()]


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError

    custom = args.cls or args.bins
    deciding = wants_decisions(args)
    if custom and deciding:
        raise InputError("decisions (--decide, --threshold, --scores, --prior, --events …) need a Tree-of-Life "
                         "vocabulary; they cannot be combined with --cls/--bins")
    if args.cls and args.bins:
        raise InputError("--cls and --bins cannot be combined")
    if custom and (args.rank or args.subset or args.vocabulary or args.taxa or args.prototypes):
        raise InputError("--cls/--bins choose custom labels; they cannot be combined with --rank, --subset, "
                         "--vocabulary, --taxa or --prototypes")
    if wants_engine(args):
        if deciding or args.prototypes:
            raise InputError("decisions (--decide, --scores, --prior …) and --prototypes are not run by --engine ray "
                             "or --output DIR/ yet; run them with the local engine and a file output")
        from ..scale import PredictTask  # light: no torch (the local engine imports it when it loads the model)

        labels = tuple(_classes(args.cls)) if args.cls else ()
        bins = ()
        if args.bins:
            from ..textbank import read_bins_csv

            bins = tuple(read_bins_csv(args.bins).items())
        task = PredictTask(model=args.model, pretrained=args.pretrained, precision=args.precision,
                           rank=args.rank or "species", k=args.k, min_prob=args.min_prob, subset=args.subset,
                           vocabulary=args.vocabulary, taxa=args.taxa, labels=labels, bins=bins)
        return run_with_engine(args, task, "predict")
    loader, problems = start_loader(args, "predict")  # first: it prepares a bundled model before torch is imported
    if loader is None:
        return 2
    from .. import classify
    from ..io.writers import format_for, open_writer
    from ..textbank import read_bins_csv
    common = dict(pretrained=args.pretrained, device=args.device, precision=args.precision,
                  batch_size=args.batch_size, workers=args.workers, compile=args.compile)
    if custom:
        clf = (classify.CustomLabelsClassifier(_classes(args.cls), model=args.model, **common) if args.cls
               else classify.CustomLabelsBinningClassifier(read_bins_csv(args.bins), model=args.model, **common))
        columns = classify.prediction_columns(None)
        predictions = clf.predict_iter(loader, k=args.k, progress=None)
    else:
        clf = classify.TreeOfLifeClassifier(args.model, vocabulary=args.vocabulary, taxa=args.taxa, **common)
        if args.prototypes:
            from ..evaluate.prototypes import load_prototypes, merge_prototypes

            clf.use_vocabulary(merge_prototypes(clf.full_bank, load_prototypes(args.prototypes, clf.model),
                                                factor=args.prototype_scale))
        if args.subset:
            clf.restrict(args.subset)
        rank = args.rank or "species"
        columns = classify.prediction_columns(rank)
        if deciding:
            return _run_decisions(args, clf, loader, rank, columns, problems)
        predictions = clf.predict_iter(loader, rank=rank, k=args.k or 5, min_prob=args.min_prob, progress=None)
    failed = 0
    with open_writer(format_for(args.output, args.format), args.output, columns) as writer:
        for pred in predictions:
            writer.write(pred.as_rows())
            if pred.error:
                failed += 1
                print(f"taxoclip predict: {pred.file_name}: {pred.error}", file=sys.stderr)
    if failed:
        print(f"taxoclip predict: {failed} of {len(loader.refs)} images could not be read (see the error column)",
              file=sys.stderr)
    return 1 if failed or problems else 0


def _run_decisions(args, clf, loader, rank: str, columns: list[str], problems: list[str]) -> int:
    """predict + decide: top-k rows with the decision columns, scores and provenance stored."""
    from ..decide import DEFAULT_CANDIDATES, DEFAULT_GROUPS, ScoresWriter, predict_decisions
    from ..decide.context import read_context
    from ..decide.options import policy_from_options
    from ..decide.pipeline import decision_columns
    from ..decide.provenance import model_identity, run_record, vocabulary_identity, write_beside
    from ..io.writers import format_for, open_writer
    from .decide import _write_events

    from ..decide.calibration import load_calibration

    policy = policy_from_options(args.threshold, args.taxon_thresholds, args.prior, args.prior_mode,
                                 args.prior_weight)
    context = read_context(args.context) if args.context else None
    calibration = load_calibration(clf.model, args.calibration)
    if calibration is not None:
        clf.temperature = calibration.temperature
    candidates, groups = args.candidates or DEFAULT_CANDIDATES, args.groups or DEFAULT_GROUPS
    record = run_record(model=model_identity(clf.model), vocabulary=vocabulary_identity(clf.bank),
                        calibration=None if calibration is None else {
                            "temperature": calibration.temperature, "datasets": calibration.datasets,
                            "ece_after": calibration.held_out.get("after", {}).get("ece")},
                        candidates=candidates, groups=groups,
                        decision=policy.as_dict(), events={"gap_s": args.event_gap} if args.events else None)
    columns = columns[:-1] + decision_columns(args.events) + ["error"]
    scores = ScoresWriter(args.scores, record) if args.scores else None
    failed, noted, events = 0, 0, []
    try:
        with open_writer(format_for(args.output, args.format), args.output, columns) as writer:
            for name, rows, decision in predict_decisions(
                    clf, loader, policy, rank=rank, k=args.k or 5, candidates=candidates, groups=groups,
                    context=context, scores=scores, events=args.events, gap=args.event_gap, progress=None,
                    events_out=events):
                if decision["error"] is not None:
                    failed += 1
                    print(f"taxoclip predict: {name}: {decision['error']}", file=sys.stderr)
                    writer.write([{"file_name": name, "error": decision["error"]}])
                    continue
                extra = {c: decision[c] for c in columns if c in decision and c not in ("file_name", "error")}
                writer.write([{"file_name": name, **row, **extra} for row in rows])
                if decision["note"]:
                    noted += 1
                    if noted <= 10:
                        print(f"taxoclip predict: {name}: {decision['note']}", file=sys.stderr)
    except BaseException:
        if scores is not None:
            scores.close(ok=False)
        raise
    if scores is not None:
        scores.close()
    if events and args.events_output:
        _write_events(events[0], args.events_output)
    write_beside(args.output, record)
    if args.scores:
        write_beside(args.scores, record)
    if failed:
        print(f"taxoclip predict: {failed} of {len(loader.refs)} images could not be read (see the error column)",
              file=sys.stderr)
    return 1 if failed or problems else 0

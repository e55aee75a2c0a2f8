"""`taxoclip decide`: decisions from stored scores, without the model (re-tune in seconds)."""
from __future__ import annotations

import argparse
import sys

from ._options import add_decision_options


def register(sub) -> None:
    p = sub.add_parser(
        "decide", help="re-decide stored scores: thresholds, location prior, events (no model needed)",
        description="Answer each photo (or event) at the deepest rank whose probability passes its threshold, "
                    "from scores stored by `taxoclip predict --scores FILE.parquet`. Gives exactly what "
                    "`predict` gives with the same decision options.")
    p.add_argument("scores", nargs="+", help="scores files (Parquet) from `taxoclip predict --scores`")
    p.add_argument("--output", "-o", default="stdout", help="output file (default: standard output)")
    p.add_argument("--format", choices=["csv", "table", "jsonl", "parquet", "json"],
                   help="output format (default: from --output's extension, else csv)")
    add_decision_options(p, predict=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..decide import DECISION_COLUMNS, decide_tables, read_scores
    from ..decide.context import read_context, with_context
    from ..decide.options import policy_from_options
    from ..decide.provenance import run_record, write_beside
    from ..io.writers import format_for, open_writer

    files = read_scores(args.scores)
    policy = policy_from_options(args.threshold, args.taxon_thresholds, args.prior, args.prior_mode,
                                 args.prior_weight)
    context = read_context(args.context) if args.context else None
    tables = (with_context(t, context) for f in files for t in f.batches())
    columns = ["file_name"] + (["event"] if args.events else []) + DECISION_COLUMNS + ["error"]
    noted = []
    with open_writer(format_for(args.output, args.format), args.output, columns) as writer:
        for _, decisions in decide_tables(tables, policy, events=args.events, gap=args.event_gap):
            writer.write_frame(decisions)
            noted.append(report_notes(decisions, "decide", shown=sum(noted)))
            events = decisions.attrs.get("events")
    if args.events and args.events_output:
        _write_events(events, args.events_output)
    write_beside(args.output, run_record(decision=policy.as_dict(), scores=[
        {"path": str(f.path), "rows": f.num_rows, "scored_by": f.provenance} for f in files],
        events={"gap_s": args.event_gap} if args.events else None))
    return 0


def report_notes(decisions, command: str, shown: int = 0, most: int = 10) -> int:
    """Per-photo notes (no location, unknown country …) to stderr, one line each, the first `most`
    of a run (all are in the output's `note` column). Returns how many this batch had."""
    rows = decisions[decisions["note"] != ""]
    for name, note in list(zip(rows["file_name"], rows["note"]))[: max(0, most - shown)]:
        print(f"taxoclip {command}: {name}: {note}", file=sys.stderr)
    if shown < most <= shown + len(rows):
        print(f"taxoclip {command}: more photos have notes: see the note column", file=sys.stderr)
    return len(rows)


def _write_events(events, path: str) -> None:
    from ..io.writers import format_for, open_writer

    cols = list(events.columns)
    with open_writer(format_for(path, None), path, cols) as w:
        w.write(events.to_dict("records"))

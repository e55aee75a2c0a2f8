"""Decisions on bio-mini: our deepest-confident-rank rule against SpeciesNet's fixed 0.65 rule.

    python bench/bench_decisions.py [--bio-mini ../shared/data/bio-mini] [--target 0.9]

Scores every bio-mini val and test photo once with taxoclip-mini over its Tree-of-Life
vocabulary (calibrated with the shipped temperature), then on the same stored scores:
  * chooses per-rank thresholds on the val photos (species first, the lowest threshold that
    keeps --target precision for the answers at that rank or deeper), and
  * on the test photos prints the risk-coverage table of those thresholds, of the shipped
    defaults, and of SpeciesNet's roll-up (top-5 species, fixed 0.65), with the ratio of
    precision and coverage.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bio-mini", default=str(Path(__file__).resolve().parents[2] / "shared/data/bio-mini"))
    ap.add_argument("--target", type=float, default=0.95, help="precision the chosen thresholds aim for")
    ap.add_argument("--model", default="taxoclip-mini")
    ap.add_argument("--keep", help="keep the scored photos (scores + labels) in this folder, and reuse them")
    args = ap.parse_args()

    from taxoclip.classify import TreeOfLifeClassifier
    from taxoclip.decide import DEFAULT_THRESHOLDS, Policy, Thresholds, decide_table
    from taxoclip.decide.calibration import load_calibration
    from taxoclip.evaluate.datasets import load_datasets
    from taxoclip.evaluate.decisions import choose_thresholds, risk_coverage, score_dataset, speciesnet_rule

    clf = TreeOfLifeClassifier(args.model, precision="fp32")
    cal = load_calibration(clf.model)
    clf.temperature = cal.temperature if cal else 1.0
    print(f"model {clf.model.id}, vocabulary {clf.bank.name} ({len(clf.bank):,} taxa), temperature {clf.temperature:.3f}")
    sets = {}
    keep_dir = Path(args.keep) if args.keep else None
    for split in ("val", "test"):
        if keep_dir and (keep_dir / f"{split}.parquet").exists():
            sets[split] = (pq.read_table(keep_dir / f"{split}.parquet"),
                           pd.read_parquet(keep_dir / f"{split}-labels.parquet"))
            continue
        t0 = time.perf_counter()
        tables, labels = [], []
        for ds in load_datasets([args.bio_mini], [split]):
            keep = (ds.labels["depth"] == 7).to_numpy()
            t = score_dataset(clf, ds).filter(pa.array(keep))
            tables.append(t)
            labels.append(ds.labels[keep].assign(dataset=ds.name))
        sets[split] = (pa.concat_tables(tables), pd.concat(labels, ignore_index=True))
        print(f"{split}: {sets[split][0].num_rows} photos with species labels, scored in "
              f"{time.perf_counter() - t0:.1f} s")
        if keep_dir:
            keep_dir.mkdir(parents=True, exist_ok=True)
            pq.write_table(sets[split][0], keep_dir / f"{split}.parquet")
            sets[split][1].astype(str).to_parquet(keep_dir / f"{split}-labels.parquet")
    val, val_labels = sets["val"]
    test, test_labels = sets["test"]
    chosen = choose_thresholds(val, val_labels, target=args.target)
    print(f"thresholds chosen on val for precision {args.target}: {chosen}")
    rules = {
        f"chosen on val (target {args.target})": decide_table(test, Policy(Thresholds(chosen))),
        "taxoclip defaults": decide_table(test, Policy(Thresholds(dict(DEFAULT_THRESHOLDS)))),
        "SpeciesNet rule (top-5, 0.65)": speciesnet_rule(test),
    }
    t0 = time.perf_counter()
    decide_table(test, Policy())
    print(f"deciding {test.num_rows} photos: {time.perf_counter() - t0:.3f} s")
    tables = {name: risk_coverage(d, test_labels) for name, d in rules.items()}
    for name, t in tables.items():
        print(f"\n### {name} (test photos: {len(test_labels)})\n")
        print(_markdown(t))
    ours, peer = tables["taxoclip defaults"], tables["SpeciesNet rule (top-5, 0.65)"]
    print("\n### defaults / SpeciesNet rule, rank or deeper\n\n| rank | coverage ratio | precision ratio |\n|---|---:|---:|")
    for (_, a), (_, b) in zip(ours.iterrows(), peer.iterrows()):
        cov = a.answered_here_or_deeper / b.answered_here_or_deeper if b.answered_here_or_deeper else float("nan")
        prec = a.precision_here_or_deeper / b.precision_here_or_deeper if b.precision_here_or_deeper else float("nan")
        print(f"| {a['rank']} | {cov:.3f} | {prec:.3f} |")
    return 0


def _markdown(t: pd.DataFrame) -> str:
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in t.itertuples(index=False)]
    head = "| " + " | ".join(t.columns) + " |\n|" + "---|" * len(t.columns)
    return head + "\n" + "\n".join("| " + " | ".join(r) + " |" for r in cells)


if __name__ == "__main__":
    sys.exit(main())

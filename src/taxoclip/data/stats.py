"""Statistics of a built dataset: counts per split, kingdom, rank and source, images per taxon.

`dataset_stats(catalog)` computes them from `catalog.parquet`; the builder stores them, with
its own counters (inputs, errors, removals), in `stats.json`; `taxoclip data stats DIR`
recomputes and prints them.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..taxonomy import RANKS

__all__ = ["dataset_stats", "load_stats", "format_stats", "HISTOGRAM_BINS"]

# Images-per-taxon histogram bins: [lo, hi] inclusive; the last is open-ended.
HISTOGRAM_BINS = ((1, 1), (2, 5), (6, 10), (11, 20), (21, 50), (51, 100), (101, 200), (201, 500), (501, 1000),
                  (1001, None))
_RANK_COLUMNS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")


def _label(lo: int, hi: int | None) -> str:
    return f"{lo}+" if hi is None else (str(lo) if lo == hi else f"{lo}-{hi}")


def dataset_stats(catalog) -> dict:
    """Counts from a catalog DataFrame (see `taxoclip.data.catalog`)."""
    df = catalog
    n = len(df)
    out: dict = {"images": int(n)}
    out["splits"] = {str(k): int(v) for k, v in df["split"].value_counts().sort_index().items()} if n else {}
    out["kingdoms"] = {str(k or "(none)"): int(v) for k, v in df["kingdom"].value_counts().sort_index().items()} if n else {}
    out["data_sources"] = {str(k): int(v) for k, v in df["data_source"].value_counts().sort_index().items()} if n else {}
    out["resolution"] = {str(k): int(v) for k, v in df["resolution"].value_counts().sort_index().items()} if n else {}
    # Taxa per rank: distinct lineages down to that rank (so two genera "Aus" in different
    # families count twice), and how many images are identified to at least that rank.
    per_rank = {}
    for i, rank in enumerate(_RANK_COLUMNS):
        col = "species_epithet" if rank == "species" else rank
        filled = df[col].astype(str) != "" if n else []
        lineage_cols = list(_RANK_COLUMNS[:i]) + [col]
        lineage_cols = ["species_epithet" if c == "species" else c for c in lineage_cols]
        taxa = df.loc[filled, lineage_cols].drop_duplicates() if n else []
        per_rank[rank] = {"taxa": int(len(taxa)), "images": int(filled.sum()) if n else 0}
    out["ranks"] = per_rank
    # Images per taxon (a taxon = the full 7-rank lineage the image carries).
    lineage = list(RANKS[:6]) + ["species_epithet"]
    sizes = df.groupby(lineage, dropna=False).size() if n else []
    hist = {}
    for lo, hi in HISTOGRAM_BINS:
        if n:
            mask = (sizes >= lo) if hi is None else ((sizes >= lo) & (sizes <= hi))
            hist[_label(lo, hi)] = int(mask.sum())
        else:
            hist[_label(lo, hi)] = 0
    out["taxa"] = int(len(sizes)) if n else 0
    out["images_per_taxon"] = hist
    if n:
        out["images_per_taxon_summary"] = {"min": int(sizes.min()), "median": float(sizes.median()),
                                           "max": int(sizes.max())}
    out["shards"] = int(df["shard"].nunique()) if n else 0
    return out


def load_stats(out: Path) -> dict:
    """`stats.json` of a built folder, with the catalog statistics recomputed."""
    from .catalog import read_catalog

    out = Path(out)
    path = out / "stats.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    stats = dataset_stats(read_catalog(out))
    if "build" in stored:
        stats["build"] = {k: v for k, v in stored["build"].items() if k != "identity"}
    return stats


def format_stats(stats: dict) -> str:
    """A plain-text report of `load_stats`'s result."""
    lines = [f"images: {stats['images']}   taxa: {stats['taxa']}   shards: {stats['shards']}"]

    def table(title: str, counts: dict) -> None:
        if not counts:
            return
        width = max(len(str(k)) for k in counts)
        lines.append(f"\n{title}")
        for k, v in counts.items():
            lines.append(f"  {str(k):<{width}}  {v:>9}")

    table("split", stats["splits"])
    table("kingdom", stats["kingdoms"])
    table("data source", stats["data_sources"])
    table("taxonomy resolution", stats["resolution"])
    lines.append("\nrank      taxa     images identified to this rank")
    for rank, c in stats["ranks"].items():
        lines.append(f"  {rank:<8}{c['taxa']:>6} {c['images']:>10}")
    table("images per taxon (number of taxa)", stats["images_per_taxon"])
    build = stats.get("build", {})
    if build.get("counts"):
        table("build", build["counts"])
    if build.get("removed"):
        table("removed (reason)", build["removed"])
    if build.get("errors"):
        table("errors (reason)", build["errors"])
    return "\n".join(lines)

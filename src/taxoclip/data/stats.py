"""Statistics of a built dataset: counts per split, kingdom, rank and source, images per taxon.

`dataset_stats(rows)` computes them in one pass over catalog rows (`catalog.iter_catalog`), so
memory grows with the number of taxa and shards, not of images; the builder stores them, with
its own counters (inputs, errors, removals), in `stats.json`; `taxoclip data stats DIR`
recomputes and prints them.
"""
from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping

__all__ = ["dataset_stats", "load_stats", "format_stats", "HISTOGRAM_BINS", "STATS_COLUMNS"]

# Images-per-taxon histogram bins: [lo, hi] inclusive; the last is open-ended.
HISTOGRAM_BINS = ((1, 1), (2, 5), (6, 10), (11, 20), (21, 50), (51, 100), (101, 200), (201, 500), (501, 1000),
                  (1001, None))
_RANK_COLUMNS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
_LINEAGE = ("kingdom", "phylum", "class", "order", "family", "genus", "species_epithet")  # a taxon
STATS_COLUMNS = [*_LINEAGE, "split", "data_source", "resolution", "shard"]  # the catalog columns read


def _label(lo: int, hi: int | None) -> str:
    return f"{lo}+" if hi is None else (str(lo) if lo == hi else f"{lo}-{hi}")


def dataset_stats(rows: Iterable[Mapping]) -> dict:
    """Counts from catalog rows (dicts with at least `STATS_COLUMNS`; see `taxoclip.data.catalog`)."""
    n = 0
    splits, kingdoms, sources, resolution, lineages = Counter(), Counter(), Counter(), Counter(), Counter()
    shards = set()
    for row in rows:
        n += 1
        splits[row["split"]] += 1
        kingdoms[row["kingdom"]] += 1
        sources[row["data_source"]] += 1
        resolution[row["resolution"]] += 1
        lineages[tuple(row[c] for c in _LINEAGE)] += 1
        shards.add(row["shard"])
    out: dict = {"images": n}
    out["splits"] = {str(k): v for k, v in sorted(splits.items())}
    out["kingdoms"] = {str(k or "(none)"): v for k, v in sorted(kingdoms.items())}
    out["data_sources"] = {str(k): v for k, v in sorted(sources.items())}
    out["resolution"] = {str(k): v for k, v in sorted(resolution.items())}
    # Taxa per rank: distinct lineages down to that rank (so two genera "Aus" in different
    # families count twice), and how many images are identified to at least that rank.
    per_rank = {}
    for i, rank in enumerate(_RANK_COLUMNS):
        filled = [(lineage, count) for lineage, count in lineages.items() if lineage[i]]
        per_rank[rank] = {"taxa": len({lineage[:i + 1] for lineage, _ in filled}),
                          "images": sum(count for _, count in filled)}
    out["ranks"] = per_rank
    # Images per taxon (a taxon = the full 7-rank lineage the image carries).
    sizes = list(lineages.values())
    out["taxa"] = len(sizes)
    out["images_per_taxon"] = {_label(lo, hi): sum(1 for x in sizes if x >= lo and (hi is None or x <= hi))
                               for lo, hi in HISTOGRAM_BINS}
    if sizes:
        out["images_per_taxon_summary"] = {"min": min(sizes), "median": float(statistics.median(sizes)),
                                           "max": max(sizes)}
    out["shards"] = len(shards)
    return out


def load_stats(out: Path) -> dict:
    """`stats.json` of a built folder, with the catalog statistics recomputed."""
    from .catalog import iter_catalog

    out = Path(out)
    path = out / "stats.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    stats = dataset_stats(iter_catalog(out, STATS_COLUMNS))
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

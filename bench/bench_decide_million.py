"""`taxoclip decide` on a million stored score rows: time and peak memory.

    python bench/bench_decide_million.py [--rows 1000000] [--keep DIR]

Generates a scores file as `predict --scores` writes it (20 species and 5 groups per higher
rank per photo, drawn from a 20,000-species synthetic tree, every photo with a country) and
times `taxoclip decide` on it in a child process, with and without a location prior
(a checklist), reporting wall time and the child's peak resident memory (its own ru_maxrss).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def tree(n_species: int, rng) -> list[list[str]]:
    out = []
    for i in range(n_species):
        g = i // 4
        out.append([f"K{g // 20000 % 3}", f"P{g // 2000}", f"C{g // 500}", f"O{g // 100}", f"F{g // 20}", f"G{g}",
                    f"e{i}"])
    return out


def generate(path: Path, rows: int, seed: int = 0) -> None:
    from taxoclip.decide.scores import LEVELS, score_schema

    rng = np.random.default_rng(seed)
    lineages = tree(20000, rng)
    keys = {d: np.array([";".join(l[:d]) for l in lineages], dtype=object) for d in range(1, 8)}
    schema = score_schema().with_metadata({b"taxoclip": json.dumps({"vocabulary": {"name": "synthetic",
                                                                                  "hash": "synthetic"}}).encode()})
    countries = np.array(["FRA", "KEN", "USA", "BRA", "AUS"], dtype=object)
    with pq.ParquetWriter(path, schema, compression="zstd") as w:
        for s in range(0, rows, 65536):
            n = min(65536, rows - s)
            centre = rng.integers(0, 20000 - 40, n)
            cols = {"file_name": pa.array([f"photo_{i:07d}.jpg" for i in range(s, s + n)]),
                    "error": pa.nulls(n, pa.string())}
            for level, depth, width in zip(LEVELS, range(7, 0, -1), [20, 5, 5, 5, 5, 5, 5]):
                pick = (centre[:, None] + rng.integers(0, 40, (n, width))) if depth == 7 else \
                    centre[:, None] + np.arange(width)[None, :] * 4 ** (7 - depth)
                pick = pick.clip(0, 19999)
                p = rng.dirichlet(np.ones(width) * 0.3, n).astype(np.float32) * (0.9 if depth == 7 else 1.0)
                p = -np.sort(-p, 1)
                offsets = pa.array(np.arange(0, n * width + 1, width, dtype=np.int32))
                cols[level] = pa.ListArray.from_arrays(offsets, pa.array(keys[depth][pick.reshape(-1)]))
                cols[f"{level}_p"] = pa.ListArray.from_arrays(offsets, pa.array(p.reshape(-1)))
                if level == "species":
                    cols["common_name"] = pa.ListArray.from_arrays(offsets, pa.array([""] * (n * width)))
            for c in ("latitude", "longitude"):
                cols[c] = pa.nulls(n, pa.float64())
            cols["country"] = pa.array(countries[rng.integers(0, 5, n)])
            for c in ("admin1", "site", "deployment", "datetime"):
                cols[c] = pa.nulls(n, pa.string())
            w.write_table(pa.table(cols, schema=schema), row_group_size=65536)


def run(args: list[str]) -> tuple[float, float]:
    t0 = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "taxoclip", "decide", *args])
    _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, not the largest of all children
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"taxoclip decide failed ({child.returncode})")
    return time.perf_counter() - t0, usage.ru_maxrss / 1024 ** 2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--keep", help="keep the generated files here")
    a = ap.parse_args()
    d = Path(a.keep or tempfile.mkdtemp(prefix="decide-bench-"))
    d.mkdir(parents=True, exist_ok=True)
    scores = d / "scores.parquet"
    t0 = time.perf_counter()
    generate(scores, a.rows)
    print(f"generated {a.rows:,} score rows in {time.perf_counter() - t0:.1f} s ({scores.stat().st_size / 1e6:.0f} MB)")
    checklist = d / "checklist.csv"
    checklist.write_text("country,scientificName\n" + "".join(
        f"{['FRA', 'KEN', 'USA'][i % 3]},G{i // 4} e{i}\n" for i in range(0, 20000, 2)))
    for name, extra in [("thresholds only", []), ("with a location prior", ["--prior", str(checklist)])]:
        wall, rss = run([str(scores), "-o", str(d / "decisions.parquet"), "--threshold", "0.5", *extra])
        print(f"decide, {name}: {wall:.1f} s for {a.rows:,} rows ({a.rows / wall:,.0f} rows/s), "
              f"peak RSS {rss:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

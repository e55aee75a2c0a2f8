"""The same prediction on the local engine and on the Ray engine, one after the other: throughput
and the Ray engine's overhead on one machine; their answers are compared too.

    python bench/bench_scale.py [--n 2000] [--model taxoclip-mini] [--repeat 1] [--keep DIR]

Photos: the first N of bio-mini's test and val sets (then train ones, for N above ~8,000),
extracted once into a folder. Each engine runs as a
user runs it, `taxoclip predict FOLDER --output DIR/` (local) and `... --engine ray` (a private
Ray instance on loopback, started and stopped by the command), in a child process. Two rates per
engine: the whole command (start-up and shutdown included) and the rate once answers flow (from
the first answer to the last, as the command's summary line reports it: a run of 10^6 photos
sees that one). Ray's start-up is a fixed cost (instance, Ray Data's actors, the model actor's
load): a one-photo run measures it.

`--cluster` adds the run cluster users make: `taxoclip predict ... --address 127.0.0.1:PORT`
against a Ray head started beforehand (`ray start --head --block` under the loopback guard, on a
free port, checked to listen on loopback only, stopped at the end). One one-photo job runs on it
first (the first job on an instance also creates Ray Data's own actors); its time is printed.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pandas as pd

BIO_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "bio-mini"


def photos(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) >= n:
        return folder
    k = 0
    for shard in sorted(BIO_MINI.glob("*/test-*.tar")) + sorted(BIO_MINI.glob("*/val-*.tar")) + \
            sorted(BIO_MINI.glob("*/train-*.tar")):  # train photos only when a big --n asks for them
        with tarfile.open(shard) as tar:
            for m in tar:
                if k < n and m.name.endswith(".jpg"):
                    (folder / f"{k:05d}.jpg").write_bytes(tar.extractfile(m).read())
                    k += 1
        if k >= n:
            break
    if k < n:
        sys.exit(f"bio-mini holds only {k} photos here (need {n}); is ../shared/data/bio-mini present?")
    return folder


def timed(cmd: list[str]) -> tuple[float, float | None, float | None]:
    """(whole command s, s to the first answer, images/s after it) of one run."""
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    wall = time.perf_counter() - t
    m = re.search(r"first answers after ([0-9.]+) s(?:, then ([0-9.]+) images/s)?", done.stderr)
    return wall, float(m[1]) if m else None, float(m[2]) if m and m[2] else None


@contextlib.contextmanager
def loopback_head(cpus: int):
    """A guarded Ray head for the length of the block, checked to listen on loopback only: its address."""
    import psutil

    from taxoclip.scale.loopback import guarded_head

    with guarded_head(num_cpus=cpus) as (address, head):
        procs = [psutil.Process(head.pid)] + psutil.Process(head.pid).children(recursive=True)
        ips = {c.laddr.ip for p in procs for c in p.net_connections() if c.status == "LISTEN"}
        assert ips <= {"127.0.0.1", "::ffff:127.0.0.1"}, f"the head listens on {ips}"
        yield address


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--model", default="taxoclip-mini")
    ap.add_argument("--repeat", type=int, default=1, help="runs per engine (the best is reported)")
    ap.add_argument("--keep", help="folder for the photos and outputs (default: a temporary one)")
    ap.add_argument("--cluster", action="store_true",
                    help="also run against a Ray head started beforehand on loopback (--address)")
    args = ap.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="bench-scale-"))
    folder = photos(root / "photos", args.n)
    base = [sys.executable, "-m", "taxoclip", "predict", str(folder), "--model", args.model, "--k", "3"]
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"{args.n} photos, model {args.model}, {os.cpu_count()} cores of {cpu}")

    runs = {"local": [], "ray": []}
    for r in range(args.repeat):
        for engine in ("local", "ray"):
            out = root / f"{engine}-{r}"
            subprocess.run(["rm", "-rf", str(out)])
            runs[engine].append(timed(base + ["--engine", engine, "-o", f"{out}/"]))
            wall, first, rate = runs[engine][-1]
            print(f"  {engine:5s} run {r + 1}: {wall:6.1f} s  ({args.n / wall:6.1f} photos/s); first answers after "
                  f"{first:.1f} s, then {rate:.1f} photos/s")
    one = root / "one.jpg"
    one.write_bytes(next(folder.glob("*.jpg")).read_bytes())
    subprocess.run(["rm", "-rf", str(root / "startup")])
    startup = timed([sys.executable, "-m", "taxoclip", "predict", str(one), "--model", args.model, "--engine", "ray",
                     "-o", f"{root / 'startup'}/"])[0]

    if args.cluster:
        with loopback_head(os.cpu_count() or 1) as address:
            subprocess.run(["rm", "-rf", str(root / "first-job")])
            first_job = timed([sys.executable, "-m", "taxoclip", "predict", str(one), "--model", args.model,
                               "--address", address, "-o", f"{root / 'first-job'}/"])[0]
            print(f"  head started beforehand at {address}: a first one-photo job on it {first_job:.1f} s")
            runs["ray, head started beforehand"] = []
            for r in range(args.repeat):
                out = root / f"cluster-{r}"
                subprocess.run(["rm", "-rf", str(out)])
                runs["ray, head started beforehand"].append(timed(base + ["--address", address, "-o", f"{out}/"]))
                wall, first, rate = runs["ray, head started beforehand"][-1]
                print(f"  ray on the running head, run {r + 1}: {wall:6.1f} s  ({args.n / wall:6.1f} photos/s); "
                      f"first answers after {first:.1f} s, then {rate:.1f} photos/s")

    whole = {e: args.n / min(w for w, _, _ in rs) for e, rs in runs.items()}
    flowing = {e: max(rate for _, _, rate in rs) for e, rs in runs.items()}
    for label, rates in (("whole command", whole), ("once answers flow", flowing)):
        for engine in [e for e in rates if e != "local"]:
            ratio = rates[engine] / rates["local"]
            print(f"{label:17s}: local {rates['local']:6.1f} photos/s   {engine} {rates[engine]:6.1f} photos/s   "
                  f"ratio {ratio:.2f} (overhead {100 * (1 - ratio):.0f} %)")
    print(f"a one-photo Ray run takes {startup:.1f} s (instance start and stop, Ray Data's actors, model load)")

    def merged(engine: str) -> pd.DataFrame:
        subprocess.run([sys.executable, "-m", "taxoclip", "merge", str(root / f"{engine}-0"), "-o",
                        str(root / f"{engine}.csv")], check=True, capture_output=True)
        return pd.read_csv(root / f"{engine}.csv", keep_default_na=False)

    a, b = merged("local"), merged("ray")
    same = a.drop(columns="score").equals(b.drop(columns="score"))
    print(f"answers: {'identical taxa and order' if same else 'DIFFERENT'}; "
          f"largest score difference {(a.score - b.score).abs().max():.2e}")


if __name__ == "__main__":
    main()

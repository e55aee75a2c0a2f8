"""Training throughput and memory: `taxoclip train` vs open_clip's own trainer, side by side.

Both train the same model (a project config registered with open_clip) on the same
webdataset shards, with the same batch size, number of steps, precision, optimiser settings
and number of data workers, one after the other on this machine. Reported:

* samples/s = batch / median step time over the steps after the first `--skip` (and the
  mean-based figure); step ends are timestamped in taxoclip's log.csv (`elapsed_s`) and, for
  open_clip_train, by a hook on the call it makes once per step after the optimiser,
  `unwrap_model(model).logit_scale.clamp_`;
* peak memory of the whole process tree (trainer + data workers), summed PSS, sampled at 20 Hz.

    python bench/bench_train.py                      # bio-mini butterflies if present, else synthetic
    python bench/bench_train.py --model taxoclip-small-vit --steps 80 --precision fp32

On a shared machine timings are noisy: each trainer runs `--repeat` times, alternating
which goes first, and the best run of each is compared (contention only ever slows a run).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIO_MINI = Path(os.environ.get("TAXOCLIP_BIO_MINI", ROOT.parent / "shared" / "data" / "bio-mini"))

# open_clip_train, with the project's model configs registered and a per-step clock.
OPEN_CLIP_DRIVER = r"""
import json, sys, time
import open_clip
open_clip.add_model_config(sys.argv[1])
import open_clip_train.train as T
import open_clip_train.data as D
# open_clip_train 3.3 pins webdataset<=0.2.86; webdataset 1.x ends each shard with an EOF marker
# its key grouping does not expect. Drop the marker (nothing else in its pipeline changes).
_expand = D.tar_file_expander
D.tar_file_expander = lambda *a, **k: (s for s in _expand(*a, **k) if isinstance(s, dict) and "fname" in s)
stamps, orig = [], T.unwrap_model
def clocked(model):
    stamps.append(time.perf_counter())
    return orig(model)
T.unwrap_model = clocked
from open_clip_train.main import main
main(sys.argv[3:])
json.dump(stamps, open(sys.argv[2], "w"))
"""


def make_shards(out: Path, n_shards: int, limit: int) -> int:
    """Shards with `<key>.jpg`, `<key>.txt` (open_clip) and `<key>.sci.txt` (taxoclip), same caption."""
    sys.path.insert(0, str(ROOT / "src"))
    from taxoclip.taxonomy import Taxon, render_caption
    from taxoclip.train.data import find_shards, read_samples

    out.mkdir(parents=True, exist_ok=True)
    if (BIO_MINI / "butterflies").is_dir():
        urls = find_shards([str(BIO_MINI / "butterflies")], "train").urls
        samples = (s for u in urls for s in read_samples(u))
    else:
        from taxoclip.train.synthetic import write_shards

        tmp = out / "_synthetic"
        samples = (s for u in write_shards(tmp, layout="raw", shards=8, per_shard=500, classes=100, size=96)
                   for s in read_samples(u))
    tars = [tarfile.open(out / f"shard-{i:05d}.tar", "w") for i in range(n_shards)]
    n = 0
    for s in samples:
        if n >= limit:
            break
        caption = render_caption(Taxon.from_record(json.loads(s["json"])), "sci").encode()
        key = f"s{n:07d}"
        for name, data in ((f"{key}.jpg", s["jpg"]), (f"{key}.txt", caption), (f"{key}.sci.txt", caption)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tars[n % n_shards].addfile(info, io.BytesIO(data))
        n += 1
    for t in tars:
        t.close()
    return n


def _pss_tree(pid: int) -> int:
    """Summed PSS (bytes) of `pid` and its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
            with open(f"/proc/{p}/task/{p}/children") as fh:
                todo.extend(int(c) for c in fh.read().split())
        except (OSError, ValueError):
            continue
    return total


def run_measured(cmd: list[str], env: dict, log: Path) -> int:
    """Run `cmd`, sampling the process tree's memory; returns the peak PSS in bytes."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        peak = 0
        stop = threading.Event()

        def sample():
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, _pss_tree(proc.pid))
                time.sleep(0.05)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        rc = proc.wait()
        stop.set()
        t.join()
    if rc != 0:
        raise SystemExit(f"{cmd[:4]} failed (exit {rc}); see {log}:\n{log.read_text()[-3000:]}")
    return peak


def throughput(stamps: list[float], batch: int, skip: int) -> dict[str, float]:
    """samples/s from the step times after `skip`: median, fastest quartile, and mean.

    On a machine shared with other jobs, steps stall for seconds whenever someone else's job
    takes the cores; the mean mostly measures them, the median less so, the 25th percentile
    of step times least.
    """
    times = sorted(b - a for a, b in zip(stamps[skip:], stamps[skip + 1:]))
    q = lambda f: times[min(len(times) - 1, int(f * (len(times) - 1) + 0.5))]
    return {"median": batch / q(0.5), "p25": batch / q(0.25), "mean": batch * len(times) / sum(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="taxoclip-small-resnet")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--skip", type=int, default=5, help="steps left out of the throughput (warm-up)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "amp_bf16", "pure_bf16"])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads for both (0: all cores)")
    ap.add_argument("--order", default="taxoclip,open_clip", help="which runs first (then alternating)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each trainer, alternating (best one counts)")
    ap.add_argument("--keep", help="keep the work directory here")
    args = ap.parse_args()

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-train-"))
    samples = args.batch_size * args.steps
    n = make_shards(work / "shards", args.shards, samples + args.batch_size * 4)
    model_dir = ROOT / "src" / "taxoclip" / "train" / "model_configs"
    env = dict(os.environ)
    env.pop("WORLD_SIZE", None)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    shard_spec = str(work / "shards" / f"shard-{{00000..{args.shards - 1:05d}}}.tar")
    common = dict(lr=1e-3, warmup=10, wd=0.2, beta1=0.9, beta2=0.98, eps=1e-6)
    runs: dict[str, list[dict]] = {"taxoclip": [], "open_clip": []}
    order = args.order.split(",")
    for rep in range(args.repeat):
        for name in (order if rep % 2 == 0 else order[::-1]):  # alternate who goes first
            if name == "taxoclip":
                out = work / f"taxoclip-{rep}"
                cmd = [sys.executable, "-m", "taxoclip", "train", "run", f"data.train=[{shard_spec}]",
                       "data.text_types=[sci]", f"model.name={args.model}", f"data.batch_size={args.batch_size}",
                       f"steps={args.steps}", f"precision={args.precision}", f"data.workers={args.workers}",
                       f"optim.lr={common['lr']}", f"optim.warmup={common['warmup']}",
                       f"optim.weight_decay={common['wd']}", f"optim.betas=[{common['beta1']},{common['beta2']}]",
                       f"optim.eps={common['eps']}", "log_every=1", "save_every=1000000", "export=false",
                       "tensorboard=false", f"out={out}", f"threads={args.threads}", "data.shuffle_buffer=5000",
                       "data.split="]
                peak = run_measured(cmd, env, work / f"taxoclip-{rep}.log")
                with open(out / "log.csv") as fh:
                    stamps = [float(r["elapsed_s"]) for r in csv.DictReader(fh)]
            else:
                stamps_file = work / f"open_clip_stamps-{rep}.json"
                cmd = [sys.executable, "-c", OPEN_CLIP_DRIVER, str(model_dir), str(stamps_file),
                       "--train-data", shard_spec, "--dataset-type", "webdataset", "--train-num-samples", str(samples),
                       "--batch-size", str(args.batch_size), "--epochs", "1", "--workers", str(args.workers),
                       "--precision", args.precision, "--model", args.model, "--device", "cpu",
                       "--lr", str(common["lr"]), "--warmup", str(common["warmup"]), "--wd", str(common["wd"]),
                       "--beta1", str(common["beta1"]), "--beta2", str(common["beta2"]), "--eps", str(common["eps"]),
                       "--save-frequency", "0", "--zeroshot-frequency", "0", "--val-frequency", "0",
                       "--report-to", "", "--logs", str(work / "open_clip_logs"), "--name", f"bench-{time.time_ns()}",
                       "--seed", "0", "--log-every-n-steps", "100"]
                peak = run_measured(cmd, env, work / f"open_clip-{rep}.log")
                stamps = json.loads(stamps_file.read_text())
            if len(stamps) < args.skip + 2:
                raise SystemExit(f"{name}: only {len(stamps)} steps recorded")
            runs[name].append({**throughput(stamps, args.batch_size, args.skip), "peak_gib": peak / 2**30})

    print(f"model {args.model}, batch {args.batch_size}, {args.steps} steps, {args.precision}, "
          f"{args.workers} data worker(s), {n} samples in {args.shards} shards; step times over steps "
          f"{args.skip + 1}..{args.steps}; {args.repeat} run(s) each, alternating")
    print(f"{'trainer':<11}{'run':>4}{'samples/s median':>18}{'p25':>8}{'mean':>8}{'peak PSS GiB':>14}")
    for name, rs in runs.items():
        for i, r in enumerate(rs):
            print(f"{name:<11}{i:>4}{r['median']:>18.1f}{r['p25']:>8.1f}{r['mean']:>8.1f}{r['peak_gib']:>14.3f}")
    best = {name: {k: max(r[k] for r in rs) for k in ("median", "p25", "mean")} for name, rs in runs.items()}
    peak = {name: max(r["peak_gib"] for r in rs) for name, rs in runs.items()}
    t, o = best["taxoclip"], best["open_clip"]
    print(f"taxoclip / open_clip_train (best run of each): speed {t['median'] / o['median']:.2f}x by median step, "
          f"{t['p25'] / o['p25']:.2f}x by fastest-quartile step, {t['mean'] / o['mean']:.2f}x by mean; "
          f"peak memory {peak['taxoclip'] / peak['open_clip']:.2f}x (largest peak of each)")


if __name__ == "__main__":
    main()

"""Distributed correctness: 2 processes x batch B (gloo, torchrun) train like 1 process x 2B (DDP and FSDP).

Both runs see the same global batch at every step (8 fixed data streams), gather features
with gradients for the global-batch InfoNCE, and average gradients across processes.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch

from taxoclip.train.synthetic import write_shards

pytestmark = pytest.mark.slow

COMMON = ["steps=20", "data.workers=0", "data.streams=2", "log_every=1", "optim.warmup=5", "optim.lr=1e-3",
          "save_every=20", "export=false", "tensorboard=false", "seed=3"]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def _losses(out):
    with open(out / "log.csv") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


def _launch(args: list[str], nproc: int = 1) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "taxoclip", "train", "run", *args] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
         "-m", "taxoclip", "train", "run", *args]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]


def test_two_processes_match_one_with_the_global_batch(tmp_path):
    write_shards(tmp_path / "bio", layout="builder", shards=4, per_shard=40)
    data = f"data.train=[{tmp_path / 'bio'}]"
    # the three runs are independent: start them together (they are small, and mostly start-up)
    runs = [_launch([data, *COMMON, f"out={tmp_path / 'one'}", "data.batch_size=16", "threads=1"]),
            _launch([data, *COMMON, f"out={tmp_path / 'two'}", "data.batch_size=8"], nproc=2),
            _launch([data, *COMMON, f"out={tmp_path / 'fsdp'}", "data.batch_size=8", "model.fsdp=true"], nproc=2)]
    for proc in runs:
        _wait(proc)

    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(a) == len(b) == 20
    rel = max(abs(x - y) / abs(x) for x, y in zip(a, b))
    assert rel < 1e-4, rel

    wa = torch.load(tmp_path / "one" / "checkpoints" / "step-0000020.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "two" / "checkpoints" / "step-0000020.pt", weights_only=True)["model"]
    diff = {k: (wa[k].float() - wb[k].float()).abs().max().item() for k in wa}
    assert max(diff.values()) < 1e-5, sorted(diff.items(), key=lambda kv: -kv[1])[:3]
    print(f"max rel loss diff {rel:.2e}; max abs weight diff {max(diff.values()):.2e}")

    # FSDP: parameters, gradients and optimiser state sharded over the 2 processes.
    c = _losses(tmp_path / "fsdp")
    assert len(c) == 20 and max(abs(x - y) / abs(x) for x, y in zip(a, c)) < 1e-4

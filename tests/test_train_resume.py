"""Exact resume: a run killed with SIGKILL after its step-30 checkpoint continues exactly.

The killed run also logged steps 31-36 before dying (work that is lost); the resumed run
drops those rows, restarts from the checkpoint (model, optimiser, data positions, RNG) and
must reproduce the uninterrupted run's losses for steps 31-60 bit for bit.
"""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys

import pytest

from taxoclip.train.synthetic import write_shards

pytestmark = pytest.mark.slow

COMMON = ["steps=60", "data.workers=1", "data.streams=2", "data.batch_size=8", "data.shuffle_buffer=16",
          "data.chunk_shards=2", "log_every=1", "optim.warmup=5", "optim.lr=1e-3", "save_every=30",
          "export=false", "tensorboard=false", "threads=1", "optim.accum=2"]


def _start(tmp_path, out, *extra, env=None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "taxoclip", "train", "run", f"data.train=[{tmp_path / 'bio'}]",
           f"data.replay=[{tmp_path / 'replay'}]", "data.replay_batch_size=4", *COMMON, f"out={out}", *extra]
    e = dict(os.environ, **(env or {}))
    e.pop("WORLD_SIZE", None)
    return subprocess.Popen(cmd, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> int:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode in (0, -signal.SIGKILL), err[-3000:]
    return proc.returncode


def _losses(out):
    with open(out / "log.csv") as fh:
        return {int(r["step"]): (r["loss"], r["text_type"]) for r in csv.DictReader(fh)}


def test_sigkill_and_resume_reproduce_the_uninterrupted_run(tmp_path):
    write_shards(tmp_path / "bio", layout="builder", shards=4, per_shard=24)
    write_shards(tmp_path / "replay", layout="caption", shards=2, per_shard=24, seed=4)
    full = _start(tmp_path, tmp_path / "full")  # the two first runs are independent: run them together
    killed = _start(tmp_path, tmp_path / "cut", env={"TAXOCLIP_TEST_SIGKILL_AT_STEP": "36"})
    assert _finish(full) == 0
    assert _finish(killed) == -signal.SIGKILL
    assert max(_losses(tmp_path / "cut")) == 36
    assert (tmp_path / "cut" / "checkpoints" / "latest").read_text().strip() == "step-0000030.pt"

    assert _finish(_start(tmp_path, tmp_path / "cut", "--resume", "latest")) == 0
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "cut")
    assert sorted(b) == list(range(1, 61))
    assert [a[s] for s in range(31, 61)] == [b[s] for s in range(31, 61)]  # same strings: bit-identical losses

"""No orphans (issue 14, item 5): SIGKILL a command's main process, and its workers go too.

Each command runs in its own process group. Once its workers are up, only the main process is
killed (as the OOM killer or `kill -9` would); within 10 s nothing of that run may be alive:
neither a process seen as its descendant nor any process left in its group. Every worker asks
the kernel for SIGKILL when its parent dies (PR_SET_PDEATHSIG, `taxoclip.orphans`); the fast
tests below read that setting back from inside each kind of worker.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

psutil = pytest.importorskip("psutil")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")


def parent_death_signal(*_) -> int:
    """The signal this process gets when its parent dies (0: none), as the kernel holds it."""
    import ctypes

    value = ctypes.c_int(-1)
    ctypes.CDLL(None, use_errno=True).prctl(2, ctypes.byref(value))  # PR_GET_PDEATHSIG
    return value.value


@linux_only
def test_predict_decode_workers_ask_to_die_with_their_parent(tmp_path):
    from helpers import make_photos

    from taxoclip.io import ImageLoader, find_images

    refs, _ = find_images(make_photos(tmp_path, n=4))
    asked = lambda img: torch.tensor([parent_death_signal()])  # noqa: E731  (run in the worker)
    batches = list(ImageLoader(refs, asked, batch_size=2, workers=2))
    assert [b.pixels.tolist() for b in batches] == [[[signal.SIGKILL]] * 2] * 2


@linux_only
def test_train_data_workers_ask_to_die_with_their_parent():
    from taxoclip.train.data import Loader

    class Asks(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield parent_death_signal()

    assert sorted(Loader(Asks(), workers=2)._loader) == [signal.SIGKILL, signal.SIGKILL]


@linux_only
def test_data_build_workers_ask_to_die_with_their_parent():
    from taxoclip.data.parallel import ordered_map

    with ordered_map(parent_death_signal, workers=2) as pool:
        assert list(pool(range(4))) == [signal.SIGKILL] * 4


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _group(pgid: int) -> list[psutil.Process]:
    """Living processes in a process group (they may have been re-parented anywhere)."""
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and _alive(p):
                out.append(p)
        except (ProcessLookupError, psutil.Error):
            pass
    return out


def kill_main_and_watch(cmd: list[str], workers: int, *, cwd: Path, start_timeout: float = 45.0) -> None:
    """Start `cmd`, wait for `workers` descendants, SIGKILL the main process, expect no survivor."""
    err = open(cwd / "stderr.txt", "w+")
    proc = subprocess.Popen(cmd, cwd=cwd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=err)
    try:
        main = psutil.Process(proc.pid)
        seen: dict[int, psutil.Process] = {}
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                for child in main.children(recursive=True):
                    seen.setdefault(child.pid, child)
            except psutil.NoSuchProcess:
                break
            if sum(_alive(c) for c in seen.values()) >= workers:
                break
            time.sleep(0.02)
        if proc.poll() is not None or sum(_alive(c) for c in seen.values()) < workers:
            err.seek(0)
            pytest.fail(f"{cmd[3:5]}: {len(seen)} workers seen, exit {proc.poll()}, before the kill; "
                        f"stderr: {err.read()[-2000:]}")
        for child in main.children(recursive=True):  # any started meanwhile
            seen.setdefault(child.pid, child)

        os.kill(proc.pid, signal.SIGKILL)  # the main process only, not the group
        proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = [p for p in seen.values() if _alive(p)] + [p for p in _group(proc.pid) if p.pid not in seen]
            if not left:
                return
            time.sleep(0.1)
        pytest.fail(f"{cmd[3:5]}: alive 10 s after the main process was killed: "
                    + ", ".join(f"{p.pid} {' '.join(p.cmdline())[:80]}" for p in left if _alive(p)))
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # never leave this run's processes behind
        except ProcessLookupError:
            pass
        proc.wait()
        err.close()


TAXOCLIP = [sys.executable, "-m", "taxoclip"]


@pytest.mark.slow
def test_predict_decode_workers_die_with_predict(tmp_path, tiny_model_dir):
    from helpers import make_photos

    photos = tmp_path / "photos"
    make_photos(photos, n=400)
    kill_main_and_watch([*TAXOCLIP, "predict", str(photos), "--model", str(tiny_model_dir),
                         "--cls", "fox,wolf,oak", "--workers", "2", "-o", str(tmp_path / "out.csv")],
                        workers=2, cwd=tmp_path)


@pytest.mark.slow
def test_data_build_workers_die_with_the_build(tmp_path):
    from data_helpers import write_shard_set
    from test_data_build import BUILD_CMD

    write_shard_set(tmp_path / "src", 300)
    kill_main_and_watch([*BUILD_CMD, "--workers", "2", str(tmp_path / "src"), "--out", str(tmp_path / "out")],
                        workers=2, cwd=tmp_path)


@pytest.mark.slow
def test_train_data_workers_die_with_train(tmp_path):
    from test_train_resume import COMMON

    from taxoclip.train.synthetic import write_shards

    write_shards(tmp_path / "bio", layout="builder", shards=4, per_shard=24)
    common = [a for a in COMMON if not a.startswith(("steps=", "data.workers=", "save_every="))]
    kill_main_and_watch([*TAXOCLIP, "train", "run", f"data.train=[{tmp_path / 'bio'}]", *common, "steps=100000",
                         "data.workers=2", "save_every=100000", f"out={tmp_path / 'run'}"],
                        workers=2, cwd=tmp_path)

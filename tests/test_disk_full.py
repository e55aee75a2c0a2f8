"""A full disk (issue 14, item 2): one clear line naming the file and what was kept, nothing kept
broken, and the same command run again after space is freed ends with the output an
uninterrupted run writes.

The end-to-end tests run on a real tmpfs of a few MB that the test mounts (root on Linux;
they skip elsewhere), filled with a ballast file so that the disk runs out part-way. The
injection tests below them raise ENOSPC inside the durable-write layer and the streaming
writer, so the same promises are checked on machines where nothing can be mounted.
"""
from __future__ import annotations

import csv
import errno
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from taxoclip.cli import main
from taxoclip.errors import DiskFull


class SmallDisk:
    """A tmpfs mounted at `path`; `leave(n)` fills it with ballast until n bytes are free."""

    def __init__(self, path: Path):
        self.path = path
        self.ballast = path / "ballast"

    def available(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def leave(self, n: int) -> None:
        self.ballast.unlink(missing_ok=True)
        with open(self.ballast, "wb") as f:
            f.write(b"\0" * max(0, self.available() - n))

    def grow(self, size: str) -> None:
        """Free space: drop the ballast and make the disk `size` (e.g. "16m")."""
        self.ballast.unlink(missing_ok=True)
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)


def _mount(path: Path, size: str) -> SmallDisk:
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root on Linux")
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    return SmallDisk(path)


@pytest.fixture
def small_disk(tmp_path):
    disk = _mount(tmp_path / "disk", "1m")
    yield disk
    subprocess.run(["umount", "-l", str(disk.path)], check=False)


def _one_error_line(err: str, path: Path) -> str:
    """The run's stderr holds one error line (no traceback) naming `path` and what was kept."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "no space left" in line]
    assert len(lines) == 1, err
    assert f"writing {path}" in lines[0] and "kept: " in lines[0] and "re-run" in lines[0]
    return lines[0]


# ----- predict ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def many_photos(tmp_path_factory) -> Path:
    from helpers import make_photos

    folder = tmp_path_factory.mktemp("photos")
    make_photos(folder, n=60)
    return folder


def _predict(photos: Path, model: Path, out: Path) -> int:
    return main(["predict", str(photos), "--model", str(model), "--cls", "fox,wolf,oak,pine,moss", "--workers", "0",
                 "-o", str(out)])


@pytest.mark.parametrize("ext", ["csv", "parquet", "txt"])
def test_predict_output_on_a_full_disk(small_disk, tmp_path, many_photos, tiny_model_dir, capsys, ext):
    reference = tmp_path / f"reference.{ext}"
    assert _predict(many_photos, tiny_model_dir, reference) == 0  # 300 rows: 6-14 kB
    capsys.readouterr()

    out = small_disk.path / f"out.{ext}"
    small_disk.leave(reference.stat().st_size // 2)  # the disk fills half-way
    assert _predict(many_photos, tiny_model_dir, out) == 2
    line = _one_error_line(capsys.readouterr().err, out)
    left = sorted(p.name for p in small_disk.path.iterdir() if p != small_disk.ballast)
    if ext == "csv":  # rows reach the file as they come: whole rows are kept, a valid CSV
        kept = out.read_text().splitlines()
        assert left == ["out.csv"] and 1 < len(kept) < len(reference.read_text().splitlines())
        assert kept == reference.read_text().splitlines()[:len(kept)]
        assert f"with its first {len(kept) - 1:,} rows" in line
        assert len(list(csv.DictReader(io.StringIO(out.read_text())))) == len(kept) - 1
    else:  # written whole at the end: nothing half-written, no temporary file left behind
        assert left == [] and "not created" in line

    small_disk.grow("16m")
    assert _predict(many_photos, tiny_model_dir, out) == 0
    if ext == "parquet":
        pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(reference))
    else:
        assert out.read_bytes() == reference.read_bytes()


# ----- data build ---------------------------------------------------------------------------------
BUILD = ["data", "build", "--min-side", "16", "--size", "32", "--shard-size", "15", "--checkpoint-every", "10",
         "--workers", "0", "--splits", "train=0.8,val=0.2", "--no-progress"]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_data_build_on_a_full_disk_keeps_finished_shards_and_continues(small_disk, tmp_path, capsys):
    from data_helpers import write_shard_set

    write_shard_set(tmp_path / "src", 120)
    assert main([*BUILD, str(tmp_path / "src"), "--out", str(tmp_path / "reference")]) == 0  # 1.8 MB
    reference = _files(tmp_path / "reference")

    out = small_disk.path / "out"
    small_disk.leave(700 * 1024)
    capsys.readouterr()
    assert main([*BUILD, str(tmp_path / "src"), "--out", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err, out)
    finished = sorted(str(p.relative_to(out)) for p in out.glob("*/shard-*.tar"))
    assert finished and f"kept: {len(finished)} finished shards and the checkpoint after record" in line
    for name in finished:  # finished shards are whole: readable tars, the same as an uninterrupted build's
        with tarfile.open(out / name) as tar:
            assert len(tar.getmembers()) > 0
        assert (out / name).read_bytes() == reference[name]

    small_disk.grow("16m")
    assert main([*BUILD, str(tmp_path / "src"), "--out", str(out)]) == 0
    assert _files(out) == reference  # shards, catalog, reports and stats.json, byte for byte


# ----- training checkpoints -----------------------------------------------------------------------
TRAIN = ["steps=6", "save_every=3", "data.workers=0", "data.streams=1", "data.batch_size=8", "data.shuffle_buffer=16",
         "data.chunk_shards=2", "log_every=1", "optim.warmup=2", "optim.lr=1e-3", "export=false",
         "tensorboard=false", "threads=1"]


def _train(data: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "taxoclip", "train", "run", f"data.train=[{data}]", *TRAIN, f"out={out}",
           "--resume", "auto"]
    env = {k: v for k, v in os.environ.items() if k != "WORLD_SIZE"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_training_on_a_full_disk_keeps_the_last_checkpoint_and_resumes_exactly(tmp_path):
    import torch

    from taxoclip.train.synthetic import write_shards

    write_shards(tmp_path / "bio", layout="builder", shards=4, per_shard=24)
    ref = _train(tmp_path / "bio", tmp_path / "reference")
    assert ref.returncode == 0, ref.stderr[-2000:]
    size = (tmp_path / "reference" / "checkpoints" / "step-0000003.pt").stat().st_size  # ~40 MB
    disk = _mount(tmp_path / "disk", str(int(size * 1.5)))
    try:
        run = disk.path / "run"
        cut = _train(tmp_path / "bio", run)
        assert cut.returncode == 2
        line = _one_error_line(cut.stderr, run / "checkpoints" / "step-0000006.pt")
        assert f"kept: the checkpoint {run / 'checkpoints' / 'step-0000003.pt'} (step 3)" in line
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-0000003.pt"]
        kept = torch.load(run / "checkpoints" / "step-0000003.pt", weights_only=True)  # whole, loadable
        assert kept["step"] == 3

        disk.grow(str(3 * size))
        again = _train(tmp_path / "bio", run)
        assert again.returncode == 0, again.stderr[-2000:]

        def losses(out):
            with open(out / "log.csv") as f:
                return [(r["step"], r["loss"], r["text_type"]) for r in csv.DictReader(f)]

        assert losses(run) == losses(tmp_path / "reference")  # the same strings: bit-identical losses
        a = torch.load(run / "checkpoints" / "step-0000006.pt", weights_only=True)["model"]
        b = torch.load(tmp_path / "reference" / "checkpoints" / "step-0000006.pt", weights_only=True)["model"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    finally:
        subprocess.run(["umount", "-l", str(disk.path)], check=False)


# ----- injected ENOSPC: the same promises without a mount ------------------------------------------
class _FullAfter(io.RawIOBase):
    """A raw file that takes `room` more bytes (the last write only partly), then raises ENOSPC."""

    def __init__(self, raw, room: int):
        self.raw, self.room = raw, room

    def writable(self):
        return True

    def write(self, b):
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = self.raw.write(bytes(b[:self.room]))
        self.room -= n
        return n

    def truncate(self, size=None):
        return self.raw.truncate(size)

    def close(self):
        self.raw.close()
        super().close()


def test_an_atomic_write_on_a_full_disk_leaves_the_old_file(tmp_path, monkeypatch):
    from taxoclip import durable

    target = tmp_path / "stats.json"
    target.write_text("old")
    real = os.fdopen
    monkeypatch.setattr(durable.os, "fdopen", lambda fd, mode: io.BufferedWriter(_FullAfter(real(fd, mode, buffering=0), 5)))
    with pytest.raises(DiskFull, match=f"writing {target}; kept: {target} as it was before this write"):
        durable.write_atomic(target, b"new contents, longer than the room left")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["stats.json"]


def test_a_streamed_csv_on_a_full_disk_keeps_its_whole_rows(tmp_path):
    from taxoclip.io.writers import open_writer

    out = tmp_path / "out.csv"
    writer = open_writer("csv", out, ["file_name", "score"])
    writer._file = _FullAfter(writer._file, 20)  # after the header: one row (10 bytes) and part of the next
    writer.write([{"file_name": "a.jpg", "score": 0.5}])
    with pytest.raises(DiskFull, match=f"writing {out}; kept: {out} with its first 1 rows"):
        writer.write([{"file_name": "b.jpg", "score": 0.25}, {"file_name": "c.jpg", "score": 0.125}])
    writer.close()
    assert out.read_text() == "file_name,score\na.jpg,0.5\n"


def test_a_cache_entry_on_a_full_disk_is_not_kept_half_written(tmp_path, monkeypatch):
    from taxoclip.cache import cache_entry, cache_root

    monkeypatch.setenv("TAXOCLIP_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DiskFull, match=r"writing .*banks/k1; kept: the cache as it was .*TAXOCLIP_CACHE"):
        with cache_entry("banks", "k1") as (final, tmp):
            (tmp / "part.npy").write_bytes(b"x" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert list((cache_root() / "banks").iterdir()) == []  # nothing a later run would trust

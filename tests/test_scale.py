"""Runs that outgrow one machine (taxoclip.scale): resumable parts, the Ray engine, the merge.

What users rely on: a killed run finishes by re-running the same command without redoing
finished parts; the Ray engine answers exactly as the local engine, for predict and for a data
build; a private Ray instance listens on loopback only and is gone when the run ends.
Ray runs go through the CLI in a subprocess, as a user starts them (the private instance and
its driver run under the loopback guard, which needs a C compiler).
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from taxoclip.cli import main

# Tiny and random, from the offline hub of conftest. In fp32: engines batch photos differently, and
# bf16 kernels round differently per batch size on some CPUs (2.4e-5 relative on an AMD Zen 4).
BIOCLIP = ("--model", "bioclip-2", "--precision", "fp32")


def cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def parts_of(folder: Path) -> dict[str, tuple[int, int]]:
    """Part file -> (inode, mtime): a part re-computed by a later run gets a new inode."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.glob("part-*.parquet"))}


@pytest.fixture(scope="module")
def many_photos(tmp_path_factory) -> list[str]:
    """Inputs for long runs: a folder of 1,000 real bio-mini photos when the corpus is here
    (bees and butterflies test sets), else of 400 synthetic ones; and one broken photo."""
    import tarfile

    from conftest import BIO_MINI

    folder = tmp_path_factory.mktemp("many")
    shards = sorted((BIO_MINI / "bees").glob("test-*.tar")) + sorted((BIO_MINI / "butterflies").glob("test-*.tar"))
    n = 0
    for shard in shards:
        with tarfile.open(shard) as tar:
            for m in tar:
                if n < 1000 and m.name.endswith(".jpg"):
                    (folder / f"{n:04d}-{os.path.basename(m.name)}").write_bytes(tar.extractfile(m).read())
                    n += 1
    if n < 1000:
        from helpers import make_photos

        shutil.rmtree(folder)
        folder.mkdir()
        make_photos(folder, n=400)
    (folder / "9999-broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")  # an error row on every engine
    return [str(folder)]


@pytest.fixture(scope="module")
def some_photos(many_photos, tmp_path_factory) -> list[str]:
    """600 of them: enough parts (of 10) to kill a run midway, few enough to run it twice quickly.
    (200 were too few once the Ray engine sped up: its blocks of 64 photos finished every part
    between the test seeing two and its SIGKILL.)"""
    folder = tmp_path_factory.mktemp("some")
    for p in [p for p in sorted(Path(many_photos[0]).iterdir()) if "broken" not in p.name][:600]:
        os.symlink(p, folder / p.name)
    return [str(folder)]


@pytest.fixture(scope="module")
def reference(hf_cache, tmp_path_factory):
    """The plain single-machine `predict` (k=3) of some inputs: what every engine must reproduce."""
    made: dict = {}

    def of(inputs: list[str]) -> pd.DataFrame:
        if tuple(inputs) not in made:
            out = tmp_path_factory.mktemp("reference") / "plain.csv"
            env = {**os.environ, "HF_HUB_CACHE": str(hf_cache), "HF_HUB_OFFLINE": "1"}
            done = subprocess.run(_taxoclip("predict", *inputs, *BIOCLIP, "--k", "3", "-o", out),
                                  capture_output=True, text=True, env=env)
            assert done.returncode in (0, 1), done.stderr  # 1: a photo could not be read
            made[tuple(inputs)] = pd.read_csv(out, keep_default_na=False)
        return made[tuple(inputs)]
    return of


def same_answers(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Same photos, taxa and order; scores equal to float rounding (batches may differ in size)."""
    pd.testing.assert_frame_equal(a.drop(columns="score"), b.drop(columns="score"))
    score = lambda df: pd.to_numeric(df.score, errors="coerce").to_numpy()  # noqa: E731 ("" on error rows)
    assert score(b) == pytest.approx(score(a), rel=1e-5, abs=1e-7, nan_ok=True)


@pytest.fixture
def private_ray():
    """Skip unless a private Ray instance can run here (Ray, psutil, a C compiler for the guard)."""
    pytest.importorskip("ray")
    pytest.importorskip("psutil")
    if not any(shutil.which(c) for c in ("cc", "gcc", "clang")):
        pytest.skip("the loopback guard of a private Ray instance needs a C compiler")


# ----- parts on the local engine ----------------------------------------------------------------
def test_parts_output_equals_plain_output(offline_hub, photos, tmp_path, capsys):
    plain = tmp_path / "plain.csv"
    assert cli(["predict", *photos, *BIOCLIP, "--k", "3", "-o", plain, "--workers", "0"], capsys)[0] == 0
    code, _, err = cli(["predict", *photos, *BIOCLIP, "--k", "3", "-o", f"{tmp_path}/run/", "--part-size", "4",
                        "--workers", "0"], capsys)
    assert code == 0, err
    assert len(parts_of(tmp_path / "run")) == -(-len(photos) // 4)
    code, _, _ = cli(["merge", tmp_path / "run", "-o", tmp_path / "merged.csv"], capsys)
    assert code == 0
    assert (tmp_path / "merged.csv").read_bytes() == plain.read_bytes()
    # merge writes any result format
    assert cli(["merge", tmp_path / "run", "-o", tmp_path / "merged.parquet"], capsys)[0] == 0
    assert pd.read_parquet(tmp_path / "merged.parquet").file_name.tolist() == \
        pd.read_csv(plain).file_name.tolist()


def test_rerun_computes_only_missing_parts_and_refuses_other_options(offline_hub, photos, tmp_path, capsys):
    run = ["predict", *photos, *BIOCLIP, "-o", f"{tmp_path}/run/", "--part-size", "2", "--workers", "0"]
    assert cli(run, capsys)[0] == 0
    before = parts_of(tmp_path / "run")
    (tmp_path / "run" / "part-00001.parquet").unlink()  # as if the run had been killed before it
    code, _, err = cli(run, capsys)
    assert code == 0
    after = parts_of(tmp_path / "run")
    assert after.keys() == before.keys()
    assert {n for n in after if after[n] != before[n]} == {"part-00001.parquet"}
    assert "1 of 3 parts computed, 2 already done" in err

    code, _, err = cli([*run, "--k", "2"], capsys)
    assert code == 2 and "holds parts of another run" in err and "task.k" in err and len(err.splitlines()) == 1
    code, _, err = cli(["predict", *photos[:-1], *BIOCLIP, "-o", f"{tmp_path}/run/", "--part-size", "2"], capsys)
    assert code == 2 and "inputs" in err


def test_merge_refuses_an_unfinished_run(offline_hub, photos, tmp_path, capsys):
    assert cli(["predict", *photos, *BIOCLIP, "-o", f"{tmp_path}/run/", "--part-size", "2", "--workers", "0"],
               capsys)[0] == 0
    (tmp_path / "run" / "part-00002.parquet").unlink()
    code, _, err = cli(["merge", tmp_path / "run", "-o", tmp_path / "m.csv"], capsys)
    assert code == 2 and "1 of 3 parts are not done" in err
    assert not (tmp_path / "m.csv").exists()


def test_parts_refuse_a_folder_that_holds_something_else(offline_hub, photos, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = cli(["predict", *photos, *BIOCLIP, "-o", f"{tmp_path}/"], capsys)
    assert code == 2 and "not an empty folder" in err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_embed_parts_equal_plain_embed(tiny_model_dir, photos, tmp_path, capsys):
    assert cli(["embed", *photos, "--model", tiny_model_dir, "-o", tmp_path / "plain.json"], capsys)[0] == 0
    assert cli(["embed", *photos, "--model", tiny_model_dir, "-o", f"{tmp_path}/run/", "--part-size", "4"],
               capsys)[0] == 0
    assert cli(["merge", tmp_path / "run", "-o", tmp_path / "merged.json"], capsys)[0] == 0
    plain = json.loads((tmp_path / "plain.json").read_text())
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert merged["embeddings"].keys() == plain["embeddings"].keys()
    for name, vec in plain["embeddings"].items():
        assert merged["embeddings"][name] == pytest.approx(vec, abs=1e-6)


def test_bad_photo_is_an_error_row_in_its_part(offline_hub, photos, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really")
    code, _, err = cli(["predict", photos[0], bad, photos[1], *BIOCLIP, "-o", f"{tmp_path}/run/", "--part-size", "2"],
                       capsys)
    assert code == 1 and "broken.jpg" in err
    assert cli(["merge", tmp_path / "run", "-o", tmp_path / "m.csv"], capsys)[0] == 0
    df = pd.read_csv(tmp_path / "m.csv", keep_default_na=False)
    assert df[df.file_name == str(bad)].error.str.len().gt(0).all()
    assert (df[df.file_name != str(bad)].error == "").all()


def test_run_summary_separates_start_up_from_throughput(monkeypatch):
    """The summary a long run prints: seconds to the first answers, then images/s counted from
    there (the first batch, answered at once, is not in the rate)."""
    from taxoclip.scale import report as report_module
    from taxoclip.scale.report import RunReport

    clock = iter([10.0] * 4 + [12.0] * 4 + [14.0] * 4)
    monkeypatch.setattr(report_module.time, "monotonic", lambda: next(clock))
    rep = RunReport(started=0.0)
    for _ in range(12):
        rep.count([{"file_name": "a.jpg"}])
    assert rep.startup_s == 10.0 and rep.images_per_s == 2.0
    assert "first answers after 10.0 s, then 2.0 images/s" in rep.summary()
    assert "images/s" not in RunReport().summary()  # nothing answered: no rate to report


# ----- the Ray engine ----------------------------------------------------------------------------
def _taxoclip(*args) -> list[str]:
    return [sys.executable, "-m", "taxoclip", *map(str, args)]


def _alive(p) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Watched:
    """A command in a subprocess; while it runs, every process below it and every socket those
    processes listen on are recorded."""

    def __init__(self, cmd: list[str], cwd: Path):
        import psutil

        self.err = open(cwd / f"stderr-{time.monotonic_ns()}.txt", "w+")
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=self.err)
        self.main = psutil.Process(self.proc.pid)
        self.seen: dict[int, object] = {}
        self.listening: set[tuple[str, str]] = set()

    def poll(self) -> bool:
        import psutil

        try:
            for p in self.main.children(recursive=True):
                self.seen.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            pass
        for p in [self.main, *self.seen.values()]:
            try:
                for c in p.net_connections(kind="inet"):
                    if c.status == psutil.CONN_LISTEN:
                        self.listening.add((c.laddr.ip, p.name()))
            except psutil.Error:
                pass
        return self.proc.poll() is None

    def wait(self, until=lambda: False, timeout: float = 1500) -> None:  # a loaded CI machine is slow
        deadline = time.monotonic() + timeout
        while self.poll() and not until():
            assert time.monotonic() < deadline, "the run did not finish in time"
            time.sleep(0.05)

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read()

    def survivors(self, within: float = 10.0) -> list:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            alive = [p for p in self.seen.values() if _alive(p)]
            if not alive:
                return []
            time.sleep(0.2)
        return [(p.pid, p.name()) for p in self.seen.values() if _alive(p)]


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.is_loopback


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.usefixtures("offline_hub", "private_ray")
def test_ray_engine_answers_as_the_local_engine_and_stays_on_loopback(many_photos, reference, tmp_path):
    run = Watched(_taxoclip("predict", *many_photos, *BIOCLIP, "--k", "3", "--engine", "ray", "-o",
                            tmp_path / "ray.csv"), tmp_path)
    run.wait()
    assert run.proc.returncode == 1, run.stderr()
    assert "9999-broken.jpg" in run.stderr()  # named, and an error row (compared below)
    assert {"raylet", "gcs_server"} <= {name for _, name in run.listening}, run.listening  # seen while it ran
    assert all(_loopback(ip) for ip, _ in run.listening), sorted(run.listening)
    assert run.survivors() == []  # the private instance is stopped at the end
    ray_rows = pd.read_csv(tmp_path / "ray.csv", keep_default_na=False)
    assert ray_rows.file_name.nunique() == len(list(Path(many_photos[0]).iterdir()))  # every photo answered
    same_answers(reference(many_photos), ray_rows)
    assert not (tmp_path / "ray.csv.parts").exists()  # merged into the file, then removed


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("engine", ["local", "ray"])
@pytest.mark.usefixtures("offline_hub")
def test_sigkilled_run_finishes_without_redoing_parts(engine, some_photos, reference, tmp_path, request):
    pytest.importorskip("psutil")
    if engine == "ray":
        request.getfixturevalue("private_ray")
    out = tmp_path / "run"
    cmd = _taxoclip("predict", *some_photos, *BIOCLIP, "--k", "3", "--engine", engine, "-o", f"{out}/",
                    "--part-size", "10", "--batch-size", "2", "--workers", "1")
    first = Watched(cmd, tmp_path)
    first.wait(until=lambda: len(list(out.glob("part-*.parquet"))) >= 2)
    assert first.proc.poll() is None, "the run ended before it could be killed midway"
    first.poll()
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait()
    assert first.survivors() == []
    done = parts_of(out)
    n_parts = json.loads((out / "manifest.json").read_text())["parts"]
    assert 2 <= len(done) < n_parts

    again = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    after = parts_of(out)
    assert len(after) == n_parts
    assert all(after[name] == stamp for name, stamp in done.items())  # finished parts were not recomputed
    assert f"{n_parts - len(done)} of {n_parts} parts computed, {len(done)} already done" in again.stderr

    subprocess.run(_taxoclip("merge", out, "-o", tmp_path / "merged.csv"), check=True, capture_output=True)
    same_answers(reference(some_photos), pd.read_csv(tmp_path / "merged.csv", keep_default_na=False))


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.usefixtures("private_ray")
def test_ray_data_build_equals_local_build(tmp_path):
    """Same shards (bytes), catalog and reports; duplicates and leaks (--exclude) found alike."""
    pytest.importorskip("pdqhash")
    from conftest import BIO_MINI

    if (BIO_MINI / "worms").is_dir():  # two real bio-mini sets; worms' test split as the evaluation set
        inputs = [BIO_MINI / "chile-birds", BIO_MINI / "worms"]
        exclude = [BIO_MINI / "worms" / "test-000.tar"]
    else:
        from data_helpers import write_shard_set

        write_shard_set(tmp_path / "src", 120, per_shard=40)
        write_shard_set(tmp_path / "eval", 10, prefix="e")  # the same pictures as src's first ten
        inputs, exclude = [tmp_path / "src"], [tmp_path / "eval"]
    common = [*inputs, "--exclude", *exclude, "--split-from-source", "--shard-size", "100", "--min-side", "32"]
    subprocess.run(_taxoclip("data", "build", *common, "--out", tmp_path / "local"), check=True,
                   capture_output=True, cwd=tmp_path)
    run = Watched(_taxoclip("data", "build", *common, "--out", tmp_path / "ray", "--engine", "ray"), tmp_path)
    run.wait()
    assert run.proc.returncode == 0, run.stderr()
    assert "raylet" in {name for _, name in run.listening}
    assert all(_loopback(ip) for ip, _ in run.listening), sorted(run.listening)
    assert run.survivors() == []
    local = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*.tar"))
    assert local and local == sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray").rglob("*.tar"))
    for rel in local:
        assert (tmp_path / "local" / rel).read_bytes() == (tmp_path / "ray" / rel).read_bytes(), rel
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "local" / "catalog.parquet"),
                                  pd.read_parquet(tmp_path / "ray" / "catalog.parquet"))
    for report in ("errors.csv", "removed.csv", "unresolved.csv"):
        assert (tmp_path / "local" / report).read_bytes() == (tmp_path / "ray" / report).read_bytes()
    assert len(pd.read_csv(tmp_path / "ray" / "removed.csv")) >= 10  # the leaks were found on Ray too



# ----- a Ray head kept between runs (--address) ---------------------------------------------------
@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1:6379", True), ("127.8.0.1:6379", True), ("localhost:6379", True), ("[::1]:6379", True),
    ("10.0.0.5:6379", False), ("head.cluster.example:6379", False), ("[2001:db8::5]:6379", False),
    ("ray://127.0.0.1:10001", False), ("http://127.0.0.1:8265", False), ("", False), (None, False)])
def test_which_addresses_are_this_machines_loopback(address, loopback):
    """Only a head on this machine's loopback gets a confined driver: Ray would turn 127.0.0.1 into
    the network address, where a guarded head does not listen; a real cluster keeps its settings."""
    from taxoclip.scale.loopback import is_loopback_address

    assert is_loopback_address(address) is loopback


@pytest.mark.parametrize("address, parts", [("127.0.0.1:6379", ("127.0.0.1", 6379)), ("[::1]:6379", ("::1", 6379)),
                                             ("::1", ("::1", None)), ("head", ("head", None)),
                                             ("head:port", ("head", None))])
def test_host_and_port_of_an_address(address, parts):
    from taxoclip.scale.loopback import host_port

    assert host_port(address) == parts


def test_a_command_run_under_the_guard_is_confined(tmp_path):
    """`python -m taxoclip.scale.loopback COMMAND`, the docs' way to start a head kept between runs."""
    if not any(shutil.which(c) for c in ("cc", "gcc", "clang")):
        pytest.skip("the loopback guard needs a C compiler")
    probe = "from taxoclip.scale.loopback import is_confined; print(is_confined())"
    done = subprocess.run([sys.executable, "-m", "taxoclip.scale.loopback", sys.executable, "-c", probe],
                          capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, "True\n"), done.stderr
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout == "False\n"
    missing = subprocess.run([sys.executable, "-m", "taxoclip.scale.loopback", str(tmp_path / "no-such-command")],
                             capture_output=True, text=True)
    assert missing.returncode == 127 and "no-such-command" in missing.stderr


@pytest.mark.usefixtures("offline_hub")
def test_a_ray_driver_knows_the_model_without_torch(photos, tmp_path):
    """What the driver decides (the run's identity, preprocessing, batch size, draft decoding)
    needs no torch: importing it (1.8 s on 2 cores, ~0.8 GB) delayed every Ray job's start."""
    probe = ("import sys; from taxoclip.scale import PartDir, PredictTask; "
             "from taxoclip.io.images import find_images; "
             "from taxoclip.scale.ray_engine import _default_batch_size, _draft; "
             f"t = PredictTask(model='bioclip-2', precision='fp32'); refs, _ = find_images([{str(photos[0])!r}]); "
             f"PartDir.open({str(tmp_path / 'run')!r}, t, refs, part_size=10); "
             "print(_default_batch_size(t, 'cpu'), _draft(t, 'cpu'), 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.split() == ["16", "False", "False"], done.stderr  # fp32: full-size decoding


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("given", ["explicit", "auto"])
@pytest.mark.usefixtures("offline_hub", "private_ray")
def test_an_address_nothing_listens_on_is_one_line(given, photos, tmp_path):
    """Ray itself retries such an address for minutes (also `auto` when the recorded instance is
    gone); the user gets one line at once."""
    address = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "RAY_ADDRESS": address} if given == "auto" else None  # what `auto` finds
    done = subprocess.run(_taxoclip("predict", *photos, *BIOCLIP, "--address", address if env is None else "auto",
                                    "-o", tmp_path / "out.csv"), capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    found = ", found for --address auto," if given == "auto" else ""
    assert f"cannot reach the Ray cluster at {address}{found} (Connection refused): start it (`ray start --head`) " \
        "or correct --address" in done.stderr
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.usefixtures("offline_hub", "private_ray")
def test_runs_on_a_guarded_head_started_beforehand(some_photos, reference, tmp_path):
    """The docs' recipe for a Ray instance kept between runs: a head started under the loopback
    guard, then two runs with `--address 127.0.0.1:PORT`. Both answer as the local engine, every
    process of the head and of the runs listens on loopback only, and the head outlives the runs."""
    import psutil

    from taxoclip.scale.loopback import guarded_head

    with guarded_head(num_cpus=2, object_store_memory=256 << 20) as (address, head):
        for r in range(2):  # the second run finds the head as the first left it
            run = Watched(_taxoclip("predict", *some_photos, *BIOCLIP, "--k", "3", "--address", address,
                                    "-o", tmp_path / f"run-{r}.csv"), tmp_path)
            run.wait()
            assert run.proc.returncode == 0, run.stderr()
            assert all(_loopback(ip) for ip, _ in run.listening), sorted(run.listening)
            same_answers(reference(some_photos), pd.read_csv(tmp_path / f"run-{r}.csv", keep_default_na=False))
        assert head.poll() is None  # a run does not stop a head it did not start
        listening = set()
        for p in [psutil.Process(head.pid), *psutil.Process(head.pid).children(recursive=True)]:
            try:
                listening |= {c.laddr.ip for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
            except psutil.Error:
                pass
        assert listening and all(_loopback(ip) for ip in listening), sorted(listening)
    assert head.poll() is not None  # stopped with the block

def test_full_disk_keeps_finished_parts_and_the_rerun_completes(offline_hub, photos, tmp_path, capsys, monkeypatch):
    import errno

    import taxoclip.scale.parts as parts_module

    real = parts_module.atomic_file
    writes: list = []

    def filling_up(path):
        if path.name.startswith("part-"):
            writes.append(path)
        if len(writes) == 2:  # the disk is full when the second part is written
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path)

    monkeypatch.setattr(parts_module, "atomic_file", filling_up)
    run = ["predict", *photos, *BIOCLIP, "-o", f"{tmp_path}/run/", "--part-size", "2", "--workers", "0"]
    code, _, err = cli(run, capsys)
    assert code == 2 and "no space left" in err and "part-00001.parquet" in err and len(err.strip().splitlines()) == 1
    assert list(parts_of(tmp_path / "run")) == ["part-00000.parquet"]
    kept = parts_of(tmp_path / "run")
    monkeypatch.setattr(parts_module, "atomic_file", real)  # space freed
    code, _, err = cli(run, capsys)
    assert code == 0 and "2 of 3 parts computed, 1 already done" in err
    assert parts_of(tmp_path / "run")["part-00000.parquet"] == kept["part-00000.parquet"]

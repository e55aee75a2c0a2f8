"""Keeping a private local Ray instance on this machine's loopback interface.

Ray binds its servers (GCS, raylets, every worker) to all interfaces and resolves a
`--node-ip-address` of 127.0.0.1 to the machine's network address; it has no setting that
keeps a single-machine instance private. taxoclip therefore runs such an instance, and the
driver process, with a tiny `bind()` wrapper (`loopback.c`, built once with the system C
compiler into the cache) preloaded, and tells Ray its node address is 127.0.0.1. A cluster
you start yourself (`--address`) keeps the network settings you gave it; a head you started
under the guard on this machine (`--address 127.0.0.1:PORT`, or `auto` for it) is driven from a
confined process too (`is_loopback_address`), since Ray replaces a 127.0.0.1 address with the
machine's network address, where such a head does not listen.

Start such a head with `python -m taxoclip.scale.loopback ray start --head …`: any command
after the module name runs with the guard loaded.
"""
from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Iterator

from ..errors import TaxoclipError

__all__ = ["guard_library", "confined_environment", "is_confined", "is_loopback_address", "ray_address",
           "host_port", "guarded_head", "run_confined", "should_confine", "stop_descendants_on_term", "main"]

_MARK = "TAXOCLIP_RAY_LOOPBACK"


def guard_library() -> Path:
    """The compiled bind() wrapper, built on first use (needs a C compiler: cc, gcc or clang)."""
    from ..cache import cache_entry

    source = resources.files("taxoclip.scale").joinpath("loopback.c").read_bytes()
    key = hashlib.sha256(source + sys.platform.encode()).hexdigest()[:16]
    with cache_entry("loopback", key) as (final, tmp):
        if tmp is not None:
            compiler = next((c for c in (os.environ.get("CC"), "cc", "gcc", "clang") if c and shutil.which(c)), None)
            if compiler is None:
                raise TaxoclipError("a private local Ray instance needs a C compiler (cc, gcc or clang) to keep it "
                                    "on 127.0.0.1; install one, or give --address of a Ray cluster you started")
            (tmp / "loopback.c").write_bytes(source)
            done = subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(tmp / "libloopback.so"),
                                   str(tmp / "loopback.c"), "-ldl"], capture_output=True, text=True)
            if done.returncode != 0:
                raise TaxoclipError(f"cannot build the loopback guard for a private Ray instance with {compiler}: "
                                    f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    return final / "libloopback.so"


def confined_environment(env: dict | None = None) -> dict:
    """`env` (default: this process's) with the guard preloaded and Ray told to stay on 127.0.0.1."""
    env = dict(os.environ if env is None else env)
    lib = str(guard_library())
    preload = [p for p in env.get("LD_PRELOAD", "").split(":") if p]
    env["LD_PRELOAD"] = ":".join([lib] + [p for p in preload if p != lib])
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray's single-machine mode: node address = localhost
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["RAY_enable_pipe_based_agent_to_parent_health_check"] = "1"  # agents exit with their raylet at once
    if "RAY_AUTH_MODE" not in env and _has_ray_token(env):
        # what Ray does for a cluster found with "auto" (and a new one: it makes the token then);
        # without it a driver given a head's explicit address waits forever on a head that wants it
        env["RAY_AUTH_MODE"] = "token"
    env[_MARK] = lib
    return env


def ray_address(address: str) -> str:
    """`address` as Ray will use it: `auto` becomes the instance `ray start` recorded here (or
    RAY_ADDRESS); raises ConnectionError when there is none."""
    if address != "auto":
        return address
    from ray._private.services import get_ray_address_from_environment

    return get_ray_address_from_environment("auto", None)


def host_port(address: str) -> tuple[str, int | None]:
    """The host and port of `host:port`, `[v6]:port`, a bare IPv6 address or a bare host."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest.lstrip(":")
    elif address.count(":") == 1:
        host, _, port = address.partition(":")
    else:
        host, port = address, ""
    return host, int(port) if port.isdigit() else None


def is_loopback_address(address: str | None) -> bool:
    """Whether a Ray `--address` names an instance on this machine's loopback interface (`auto`:
    the one `ray start` began here, as Ray finds it)."""
    if not address:
        return False
    try:
        address = ray_address(address)
    except (ImportError, ConnectionError):  # no Ray, or none running: the engine says so in one line
        return False
    if "://" in address:  # Ray Client (ray://) and job-server addresses: not a GCS on this machine
        return False
    host = host_port(address)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _has_ray_token(env: dict) -> bool:
    if env.get("RAY_AUTH_TOKEN"):
        return True
    path = env.get("RAY_AUTH_TOKEN_PATH") or os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    return os.path.isfile(path)


def is_confined() -> bool:
    """Whether this process runs with the guard loaded (so Ray started here stays on loopback)."""
    lib = os.environ.get(_MARK)
    if not lib or lib not in os.environ.get("LD_PRELOAD", ""):
        return False
    try:
        with open("/proc/self/maps") as f:
            return lib in f.read()
    except OSError:
        return False


def should_confine() -> bool:
    """Whether a command about to start a private Ray instance must first re-run itself under the
    guard: on Linux, unless it already runs under it. A re-run in which the guard did not load
    (an LD_PRELOAD the system ignores) is an error, not another re-run."""
    if not sys.platform.startswith("linux") or is_confined():
        return False
    if os.environ.get(_MARK):
        raise TaxoclipError(f"the loopback guard {os.environ[_MARK]} did not load (LD_PRELOAD ignored?); give "
                            "--address of a Ray instance you started instead")
    return True


def run_confined(argv: list[str]) -> int:
    """Run `python -m taxoclip ARGV` with the guard loaded; it dies with this process."""
    import signal
    from functools import partial

    from ..orphans import die_with_parent

    # SIGTERM, not SIGKILL: Ray's driver then stops the instance it started (its agents included)
    proc = subprocess.Popen([sys.executable, "-m", "taxoclip", *argv], env=confined_environment(),
                            preexec_fn=partial(die_with_parent, os.getpid(), signal.SIGTERM))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()


def stop_descendants_on_term() -> None:
    """In the confined driver: adopt the instance's orphans and stop them all when told to stop.

    The command that started us dies (even by SIGKILL) -> we get SIGTERM (`run_confined`) ->
    every process below us is killed, then we exit. Ray's own shutdown does not reach the agents
    a raylet started once the raylet is gone; as a child subreaper we still see them.
    """
    import ctypes
    import signal

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass

    def stop(signum, _frame):
        for pid in _descendants(os.getpid()):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def _descendants(root: int) -> list[int]:
    """Every living process below `root` (from /proc: no dependency for one walk)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@contextlib.contextmanager
def guarded_head(num_cpus: int | None = None, object_store_memory: int = 512 << 20,
                 timeout: float = 300) -> Iterator[tuple[str, subprocess.Popen]]:
    """A Ray head under the guard on a free 127.0.0.1 port for the length of the block: its address
    and its `ray start` process. What `python -m taxoclip.scale.loopback ray start --head …` starts
    by hand, for benches and tests that measure runs on a head started beforehand."""
    import signal
    import socket
    import tempfile
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp_dir = tempfile.mkdtemp(prefix="ray-")  # not the user's /tmp/ray (short: it holds Unix sockets)
    err = tempfile.TemporaryFile()
    head = subprocess.Popen([sys.executable, "-m", "taxoclip.scale.loopback", "ray", "start", "--head", "--block", "--port", str(port),
                             "--temp-dir", temp_dir, "--node-ip-address", "127.0.0.1",
                             "--num-cpus", str(num_cpus or os.cpu_count() or 1), "--include-dashboard", "false",
                             "--object-store-memory", str(object_store_memory), "--disable-usage-stats"],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + timeout
        while True:  # the head is up once its GCS port answers
            if head.poll() is not None:
                err.seek(0)
                raise TaxoclipError(f"ray start failed: {err.read().decode(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                raise TaxoclipError(f"the Ray head on 127.0.0.1:{port} did not start within {timeout:.0f} s")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)  # a starting server: nothing to wait on but its socket
        yield f"127.0.0.1:{port}", head
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops the head's processes on SIGTERM
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        err.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m taxoclip.scale.loopback COMMAND …`: COMMAND (`ray start --head …`) under the guard,
    so a Ray head kept between runs listens on 127.0.0.1 only, as a private instance does."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m taxoclip.scale.loopback COMMAND [ARG …]   e.g. ray start --head --port 6379")
        return 0 if argv else 2
    try:
        env = confined_environment()
    except TaxoclipError as e:
        print(f"taxoclip: {e}", file=sys.stderr)
        return 2
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        print(f"taxoclip: cannot run {argv[0]}: {e.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())

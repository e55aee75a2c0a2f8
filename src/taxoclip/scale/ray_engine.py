"""The Ray engine: the same parts as the local engine, computed on a Ray cluster.

    inputs of the unfinished parts ─ Ray Data ─> decode + preprocess (CPU tasks, any node)
        ─> model (an actor pool: one model per actor, a GPU each when asked) ─> rows, in input order
        ─> the driver commits each part as it completes (`local.commit_in_parts`)

Decoding and the model run the code of the single-machine path (`io.images.load_batch`,
`Task.open().rows`), so the answers are the local engine's. Ray retries a failed decode task
and restarts a dead actor, whose batches run again; a photo that cannot be read is an error
row, as locally. The vocabulary is opened by each actor from the converted cache, a
memory-mapped file, so actors on one machine share one copy in the page cache.

`ray_session` connects to a cluster (`address`) or starts a private single-machine instance
(loopback only, capped object store) and stops it afterwards; `RayOrderedMap` gives the data
builder Ray actors in place of its process pool.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import deque
from typing import Callable, Iterable, Iterator

from ..errors import TaxoclipError
from ..io.images import Batch, ImageRef
from .local import commit_in_parts
from .parts import PartDir
from .report import RunReport

__all__ = ["run_ray", "ray_session", "RayOrderedMap", "build_on_ray", "DEFAULT_OBJECT_STORE"]

log = logging.getLogger(__name__)

DEFAULT_OBJECT_STORE = 512 << 20  # a private instance's object store: enough for ~4,000 photos in flight


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
                object_store_memory: int | None = None) -> Iterator[None]:
    """Ray for the length of a run: the cluster at `address`, or a private local instance (on
    127.0.0.1 when this process runs under the loopback guard, see `loopback`)."""
    try:
        import ray
    except ImportError:
        raise TaxoclipError("the Ray engine needs Ray: pip install 'taxoclip[scale]'") from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():  # the caller's own session
        yield
        return
    kwargs = dict(log_to_driver=False, configure_logging=False)
    if not log.isEnabledFor(logging.INFO):  # Ray's start-up notices are not the user's business
        logging.getLogger("ray").setLevel(logging.ERROR)
    if address:
        _check_reachable(address)
        ray.init(address=address, **kwargs)
    else:
        from .loopback import is_confined, stop_descendants_on_term

        if not is_confined():
            log.warning("starting a local Ray instance without the loopback guard: it listens on every interface")
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                 object_store_memory=object_store_memory or DEFAULT_OBJECT_STORE,
                 _node_ip_address="127.0.0.1" if is_confined() else None, **kwargs)
        if is_confined():  # a private instance dies with the command that started it
            stop_descendants_on_term()
    try:
        _quiet_ray_data()
        yield
    finally:
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """One clear line for an address nothing listens on: Ray itself retries for minutes (for
    `auto` too, when the instance `ray start` recorded has stopped without a `ray stop`)."""
    import socket

    from .loopback import host_port, ray_address

    try:
        found = ray_address(address)
    except ConnectionError:
        raise TaxoclipError(f"--address {address}: no Ray instance started on this machine (`ray start --head`) "
                            "or named by RAY_ADDRESS") from None
    host, port = host_port(found)
    if "://" in found or port is None:  # Ray Client and job addresses: Ray's own checks
        return
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:
        via = f", found for --address {address}," if found != address else ""
        raise TaxoclipError(f"cannot reach the Ray cluster at {found}{via} ({e.strerror or e}): start it "
                            "(`ray start --head`) or correct --address") from None


def _quiet_ray_data() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ctx.enable_progress_bars = False  # ours counts photos; Ray's would count blocks
    ctx.print_on_execution_start = False
    ctx.execution_options.preserve_order = True  # parts are slices of the input order


# ----- predict / embed -----------------------------------------------------------------------
def run_ray(parts: PartDir, *, num_workers: int | None = None, gpus_per_worker: float = 0,
            batch_size: int | None = None, progress: bool | None = None) -> RunReport:
    """Compute the unfinished parts on the Ray cluster of the current `ray_session`."""
    import pyarrow as pa
    import ray
    import ray.data

    report = RunReport.start(parts)
    pending = parts.pending()
    if not pending:
        return report
    task = parts.task
    device = "cuda" if gpus_per_worker else "cpu"
    workers = num_workers or _default_workers(gpus_per_worker)
    batch_size = batch_size or _default_batch_size(task, device)
    preprocess, draft = task.preprocess(), _draft(task, device)
    refs = [r for i in pending for r in parts.part_refs(i)]
    table = pa.table({"index": list(range(len(refs))), "name": [r.name for r in refs],
                      "path": [r.path for r in refs], "offset": [r.offset for r in refs],
                      "size": [r.size for r in refs]})
    per_block = max(batch_size, 64)  # blocks of a few batches: decoding spreads over the cluster's CPUs
    blocks = [table.slice(i, per_block) for i in range(0, table.num_rows, per_block)]
    ds = (ray.data.from_arrow(blocks)
          # half a CPU per decode task: light work, and resources unlike the model stage's keep Ray
          # Data from fusing decoding into the model actor, so the two run side by side
          .map_batches(_decode, fn_kwargs={"preprocess": preprocess, "draft": draft}, batch_size=batch_size,
                       batch_format="pyarrow", num_cpus=0.5, concurrency=_decode_tasks(workers, gpus_per_worker))
          .map_batches(_ModelWorker, fn_constructor_kwargs={"task": task.as_dict(), "device": device,
                                                              "batch_size": batch_size},
                       batch_size=batch_size, batch_format="numpy",
                       compute=ray.data.ActorPoolStrategy(size=workers),
                       num_gpus=gpus_per_worker or None, num_cpus=0 if gpus_per_worker else 1))

    def results() -> Iterator[tuple[ImageRef, list[dict]]]:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for i, rows in zip(batch["index"], batch["rows"]):
                yield refs[int(i)], json.loads(rows)

    commit_in_parts(parts, pending, results(), report, progress)
    return report


def _default_workers(gpus_per_worker: float) -> int:
    """Model actors: as many as the cluster's GPUs allow, else one per node (a CPU actor uses all
    of its node's cores, as the local engine does; Ray places actors on nodes with room)."""
    import ray

    if gpus_per_worker:
        return max(1, int(ray.cluster_resources().get("GPU", 0) // gpus_per_worker))
    return max(1, sum(1 for n in ray.nodes() if n.get("Alive")))


def _decode_tasks(workers: int, gpus_per_worker: float) -> int:
    """Decode tasks at once: the local engine's rule (`io.images.default_workers`) over the
    cluster. A CPU model actor keeps its node's cores busy, so decoding gets the cores left over
    (at most four per node); with GPU actors every CPU decodes. More would oversubscribe: on 2
    cores, two decode tasks beside the model gave 67 photos/s, one 86-99."""
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    if gpus_per_worker:
        return max(1, cpus)
    nodes = max(1, sum(1 for n in ray.nodes() if n.get("Alive")))
    return max(1, min(4 * nodes, cpus - workers))


def _default_batch_size(task, device: str) -> int:
    """The local engine's batch size for the model, decided without torch: the driver never
    loads the model, and importing torch here (1.8 s on 2 cores) delayed every job's start."""
    from ..models import resolve
    from ..models.runtime import batch_size_for

    return batch_size_for(resolve(task.model, task.pretrained).card, device)


def _draft(task, device: str) -> bool:
    from ..models import resolve
    from ..models.runtime import precision_name, wants_draft

    return wants_draft(resolve(task.model, task.pretrained).card, precision_name(task.precision, device))


def _decode(table, *, preprocess, draft: bool) -> dict:
    """Ray Data stage: inputs -> preprocessed pixels (zeros and an error for unreadable photos).
    Without torch: a decode worker stays a small process (`io.preprocess`)."""
    import numpy as np

    from ..io.images import load_batch

    cols = {c: table.column(c).to_pylist() for c in ("index", "name", "path", "offset", "size")}
    refs = [ImageRef(n, path=p, offset=o, size=s) for n, p, o, s in
            zip(cols["name"], cols["path"], cols["offset"], cols["size"])]
    batch = load_batch(refs, preprocess, draft=draft, arrays=True)
    pixels = np.zeros((len(refs), 3, preprocess.size, preprocess.size), dtype=np.float32)
    if batch.ok:
        pixels[batch.ok] = batch.pixels
    return {"index": np.asarray(cols["index"], dtype=np.int64), "name": np.asarray(cols["name"], dtype=object),
            "pixels": pixels, "error": np.asarray([batch.errors.get(i, "") for i in range(len(refs))], dtype=object)}


class _ModelWorker:
    """Ray Data actor: one loaded model; decoded batch -> each photo's rows (as JSON).

    Ray runs the constructor on the worker's main thread and the batches on another, and torch's
    thread count is a per-thread OpenMP setting, so the model is loaded, and the thread count
    set, in the thread that runs the batches, on the first one. (Loaded in the constructor, the
    batches had run with Ray's one thread, and beside the main thread's OpenMP team: 2,000
    photos flowed at 293 photos/s against 387 locally on a 2-core Xeon.)
    """

    def __init__(self, task: dict, device: str, batch_size: int):
        self._open = (task, device, batch_size)
        self.runner = None

    def _load(self):
        import torch

        from .tasks import task_from_dict

        task, device, batch_size = self._open
        if device == "cpu":  # Ray gives workers one thread; the model wants every core, as locally
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                      else (os.cpu_count() or 1)))
        return task_from_dict(task).open(device, batch_size)

    def __call__(self, batch: dict) -> dict:
        import numpy as np
        import torch

        if self.runner is None:
            self.runner = self._load()
        errors = {i: e for i, e in enumerate(batch["error"]) if e}
        ok = [i for i in range(len(batch["index"])) if i not in errors]
        refs = [ImageRef(str(n)) for n in batch["name"]]
        pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok]))
        rows = self.runner.rows(Batch(refs, pixels, ok, errors))
        return {"index": batch["index"], "rows": np.asarray([json.dumps(r) for r in rows], dtype=object)}


# ----- the data builder's map ----------------------------------------------------------------
class _MapActor:
    def __init__(self, fn: Callable, initializer: Callable | None, initargs: tuple):
        if initializer is not None:
            initializer(*initargs)
        self.fn = fn

    def run(self, batch):
        return self.fn(batch)


class RayOrderedMap:
    """`data.parallel.ordered_map` on Ray actors: `fn(batch)` for each batch, results in input
    order, at most `window` batches in flight; a dead actor is restarted and its batch re-run.
    The builder keeps every decision (duplicates, leaks, splits, shards) in its own process, so
    its output is the local engine's whatever the cluster."""

    forks = False  # actors share no memory with the caller (the builder's decode budget stays local)

    def __init__(self, fn: Callable, *, workers: int, initializer: Callable | None = None, initargs: tuple = (),
                 window: int | None = None):
        import ray

        n = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        actor = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=-1)(_MapActor)
        self.actors = [actor.remote(fn, initializer, initargs) for _ in range(n)]
        self.window = window or 4 * n

    def __call__(self, batches: Iterable) -> Iterator:
        import ray

        pending: deque = deque()
        for k, batch in enumerate(batches):
            pending.append(self.actors[k % len(self.actors)].run.remote(batch))
            if len(pending) >= self.window:
                yield ray.get(pending.popleft())
        while pending:
            yield ray.get(pending.popleft())

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []

    def __enter__(self) -> "RayOrderedMap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def build_on_ray(inputs, out, *, exclude=(), config=None, options=None, address: str | None = None,
                 workers: int | None = None) -> dict:
    """`data.build.build` with its worker batches on Ray actors (`workers`, default one per CPU of
    the cluster); every decision stays in this process, so the output is the local build's."""
    from dataclasses import replace

    import ray

    from ..data.build import BuildConfig, BuildOptions, build

    with ray_session(address):
        n = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        options = replace(options or BuildOptions(), mapper=RayOrderedMap, workers=n)
        return build(inputs, out, exclude=exclude, config=config or BuildConfig(), options=options)

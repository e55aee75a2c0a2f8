"""Load test of `taxoclip serve` on 127.0.0.1, beside the offline CLI with the same model.

    python bench/bench_serve.py                       # 16 clients, 60 s, one photo per request
    python bench/bench_serve.py --clients 16 --seconds 60 --photos-per-request 4

Starts the server (bound to 127.0.0.1, a free port), sends keep-alive requests from
`--clients` threads (stdlib http.client with prebuilt bodies, so the load generator costs
the shared 2 cores as little as possible) and prints: requests and photos per second,
failures by status, p50/p90/p99 latency, the cores the server kept busy, its resident memory after the first and
the last 1,000 requests, and the ratio to `taxoclip predict` photos/s (steady state,
(512 - 64) / (T512 - T64), medians of 3) measured in the same run, before and after the load
(this machine's speed drifts by tens of percent within minutes). Nothing is sent to any
other address.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_predict import make_photos, timed  # bench/ is on sys.path when run as a script

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def body_for(photos: list[Path], boundary: str = "taxoclipbench") -> tuple[bytes, str]:
    parts = []
    for p in photos:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{p.name}"\r\n'
                     f"Content-Type: image/jpeg\r\n\r\n".encode() + p.read_bytes() + b"\r\n")
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n5\r\n--{boundary}--\r\n'.encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
        try:
            c = http.client.HTTPConnection(HOST, port, timeout=2)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        threading.Event().wait(0.25)  # polling a starting server: nothing to wait on but the socket
    raise SystemExit("server not ready in time")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--photos-per-request", type=int, default=1)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-wait-ms", type=float, default=None, help="the server's batching wait (default: its own)")
    ap.add_argument("--work", help="scratch folder (default: a temporary one)")
    ap.add_argument("--skip-cli", action="store_true", help="do not measure the offline CLI")
    args = ap.parse_args()
    import psutil

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-serve-"))
    photos = make_photos(work / "photos", 512)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TAXOCLIP_CACHE": str(work / "taxoclip-cache")}
    def cli_steady() -> float:
        def ours(ph, out):
            return ["taxoclip", "predict", *map(str, ph), "--output", str(out)]
        t64 = statistics.median(timed(ours(photos[:64], work / "c64.csv"), env)["wall_s"] for _ in range(3))
        t512 = statistics.median(timed(ours(photos, work / "c512.csv"), env)["wall_s"] for _ in range(3))
        return 448 / (t512 - t64)

    cli = []  # measured before and after the load: this machine's speed drifts within minutes
    if not args.skip_cli:
        timed(["taxoclip", "predict", *map(str, photos[:2]), "--output", str(work / "warm.csv")], env)  # the cache
        cli.append(cli_steady())

    port = free_port()
    server = subprocess.Popen(["taxoclip", "serve", "--host", HOST, "--port", str(port), "--max-batch",
                               str(args.max_batch), *(["--max-wait-ms", str(args.max_wait_ms)] if args.max_wait_ms
                                                      is not None else [])], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_ready(port, server)
        listening = {c.laddr.ip for c in psutil.Process(server.pid).net_connections() if c.status == "LISTEN"}
        assert listening == {HOST}, f"server listens on {listening}"
        proc = psutil.Process(server.pid)
        bodies = [body_for(random.Random(i).sample(photos, args.photos_per_request)) for i in range(64)]
        lock = threading.Lock()
        latencies, statuses, rss = [], {}, []
        stop_at = time.monotonic() + args.seconds

        def client(n: int) -> None:
            conn = http.client.HTTPConnection(HOST, port, timeout=120)
            i = n
            while time.monotonic() < stop_at:
                body, ctype = bodies[i % len(bodies)]
                i += args.clients
                t = time.perf_counter()
                try:
                    conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": ctype})
                    resp = conn.getresponse()
                    data = resp.read()
                    status = resp.status
                    if status == 200 and any("error" in r for r in json.loads(data)["results"]):
                        status = "200 with errors"
                except (OSError, http.client.HTTPException) as e:
                    status = type(e).__name__
                    conn.close()
                    conn = http.client.HTTPConnection(HOST, port, timeout=120)
                dt = time.perf_counter() - t
                with lock:
                    latencies.append(dt)
                    statuses[status] = statuses.get(status, 0) + 1
                    if len(latencies) % 1000 == 0:
                        rss.append((len(latencies), proc.memory_info().rss / 2**30))
        t0, cpu0 = time.perf_counter(), sum(proc.cpu_times()[:2])
        threads = [threading.Thread(target=client, args=(n,)) for n in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        cores = (sum(proc.cpu_times()[:2]) - cpu0) / wall  # every thread of the server: is it busy or idle?
        c = http.client.HTTPConnection(HOST, port, timeout=10)
        c.request("GET", "/metrics")
        metrics = dict(line.rsplit(" ", 1) for line in c.getresponse().read().decode().splitlines()
                       if line.startswith("taxoclip_batch_") and "{" not in line)
        batches = max(1.0, float(metrics["taxoclip_batch_photos_count"]))
        batch = float(metrics["taxoclip_batch_photos_sum"]) / batches
        batch_ms = 1e3 * float(metrics["taxoclip_batch_seconds_sum"]) / batches
    finally:
        server.terminate()
        server.wait(30)
    if cli:
        cli.append(cli_steady())

    n = len(latencies)
    q = statistics.quantiles(latencies, n=100)
    photos_s = statuses.get(200, 0) * args.photos_per_request / wall
    cpu = open("/proc/cpuinfo").read().split("model name")[1].split(":")[1].splitlines()[0].strip()
    print(f"machine: {os.cpu_count()} CPUs, {cpu}")
    print(f"serve: {args.clients} clients x {args.seconds:.0f} s, {args.photos_per_request} photo(s) per request: "
          f"{n} requests, {n / wall:.1f} requests/s, {photos_s:.1f} photos/s; statuses {statuses}")
    print(f"mean batch {batch:.1f} photos, {batch_ms:.0f} ms in the model ({batch_ms * batches / 1e3 / wall:.0%} of "
          f"the time); the server used {cores:.2f} of {os.cpu_count()} cores during the load")
    print(f"latency p50 {1e3 * q[49]:.0f} ms | p90 {1e3 * q[89]:.0f} ms | p99 {1e3 * q[98]:.0f} ms")
    if rss:
        first, last = rss[0], rss[-1]
        print(f"server RSS after {first[0]} requests {first[1]:.3f} GB, after {last[0]} requests {last[1]:.3f} GB "
              f"(all samples: {' '.join(f'{g:.3f}' for _, g in rss)})")
    if cli:
        mean = statistics.mean(cli)
        print(f"offline CLI (same model, this run): {cli[0]:.1f} photos/s steady before the load, {cli[1]:.1f} after | "
              f"server/CLI {photos_s / mean:.2f} (of their mean {mean:.1f})")


if __name__ == "__main__":
    sys.exit(main())

"""Fetch speed and memory: taxoclip vs img2dataset on the same URLs from a local server.

    python bench/bench_fetch.py                        # 2,000 URLs: images/s side by side
    python bench/bench_fetch.py --memory               # also 20,000 URLs: peak RSS must stay flat
    python bench/bench_fetch.py --resize shorter-side  # aspect kept: taxoclip shorter-side vs i2d keep_ratio
    python bench/bench_fetch.py --latency 0.05         # each answer 50 ms late, like a far server

A server process on 127.0.0.1 serves distinct JPEGs (bio-mini photos re-encoded at
--source-size px, like iNaturalist's "medium" size; generated pictures without bio-mini) at
/img/<i>.jpg. Each tool runs as its own process, timed from start to exit, while a sampler sums
the RSS of its process tree every 20 ms:

- taxoclip-fetch:  `fetch_all` only (download + journal), the network layer alone;
- taxoclip-resize: `fetch_all` + decode, squash to --image-size, JPEG, webdataset tar: the
                   same work img2dataset does, with a 2-thread pool for the image work;
- taxoclip-build:  `taxoclip data build` with its default options on a Darwin Core archive of
                   the same URLs (when the builder's CLI is installed): fetch + everything the
                   builder adds (MD5 and PDQ, exact and near-duplicate removal, ten captions and
                   a JSON per sample, catalog, resumable checkpoints);
- taxoclip-build-nodedup: the same with `--dedup-threshold 0` (no near-duplicate search, which
                   img2dataset does not have; exact duplicates are still removed);
- img2dataset:     `img2dataset` doing the same image work: same output size, same rejection of
                   images whose shorter side is below --min-side, area downscaling (both tools'
                   default), JPEG quality 95, webdataset output, 2 processes x 16 threads.

Resize modes: img2dataset has no squash (aspect not kept); `--resize squash` (taxoclip's default)
compares it with img2dataset's center_crop (shorter side to the size, then the centre cut out:
the same output size and about the same resampling work); `--resize shorter-side` compares the
two identical modes (taxoclip shorter-side, img2dataset keep_ratio). Both tools count images
fully processed: taxoclip's written + removed as duplicates, img2dataset's written.

img2dataset is looked for in --img2dataset, $IMG2DATASET, then PATH; install it in its own
virtualenv (`python -m venv ../venv-img2dataset && ../venv-img2dataset/bin/pip install
img2dataset`, found there too): it pins an old webdataset that would break taxoclip's environment. Timings on a
shared 2-core machine are noisy; use --repeat to take the best of several runs (the tools take
turns, so a change in the machine's load hits them alike).
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from _measure import measure  # bench/ is on sys.path when run as a script

HERE = Path(__file__).resolve()
BIO_MINI = Path(os.environ.get("TAXOCLIP_BIO_MINI", HERE.parents[2] / "shared" / "data" / "bio-mini"))


# ----- images to serve ---------------------------------------------------------------------------
def _encode_one(args: tuple[bytes | None, int, int]) -> bytes:
    from PIL import Image, ImageDraw

    src, size, i = args
    if src is not None:
        im = Image.open(io.BytesIO(src)).convert("RGB")
        scale = size / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BICUBIC)
    else:  # no bio-mini: a distinct synthetic picture
        im = Image.new("RGB", (size, size * 3 // 4), ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256))
        draw = ImageDraw.Draw(im)
        for k in range(12):
            x, y = (i * (k + 3) * 131) % size, (i * (k + 5) * 71) % (size * 3 // 4)
            draw.ellipse((x, y, x + size // 5, y + size // 6), fill=((k * 40 + i) % 256, (i * k) % 256, 128))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def prepare_images(n: int, size: int, cache: Path) -> Path:
    """n distinct JPEGs in one blob + offsets, cached across runs."""
    out = cache / f"images-{size}px-{n}"
    if (out / "offsets.json").exists():
        return out
    from multiprocessing import Pool

    sources: list[bytes | None] = []
    if (BIO_MINI / "taxa.csv").exists():
        for shard in sorted(BIO_MINI.glob("*/*.tar")):
            with tarfile.open(shard) as tar:
                sources += [tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")]
            if len(sources) >= n:
                break
    sources = (sources + [None] * n)[:n]
    print(f"preparing {n} images at {size} px in {out} (once) …", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(dir=cache))
    with Pool(2) as pool, open(tmp / "images.bin", "wb") as fh:
        offsets = [0]
        for data in pool.imap(_encode_one, [(s, size, i) for i, s in enumerate(sources)], chunksize=64):
            fh.write(data)
            offsets.append(offsets[-1] + len(data))
    (tmp / "offsets.json").write_text(json.dumps(offsets))
    tmp.rename(out)
    return out


# ----- the server --------------------------------------------------------------------------------
def serve(images: Path, port_file: Path, latency: float) -> None:
    """aiohttp server on 127.0.0.1: /img/<i>.jpg -> image i (run in its own process)."""
    from aiohttp import web

    blob = (images / "images.bin").read_bytes()
    offsets = json.loads((images / "offsets.json").read_text())
    bodies = [blob[a:b] for a, b in zip(offsets, offsets[1:])]

    async def image(request: web.Request) -> web.Response:
        i = int(request.match_info["i"])
        if latency:
            await asyncio.sleep(latency)
        return web.Response(body=bodies[i % len(bodies)], content_type="image/jpeg")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/img/{i:\\d+}.jpg", image)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(runner, sock, backlog=1024)
        await site.start()
        port_file.write_text(str(sock.getsockname()[1]))
        await asyncio.Event().wait()

    asyncio.run(main())


# ----- workers (each runs in its own measured process) ---------------------------------------------
def worker_fetch(urls: list[str], out: Path, concurrency: int, resize: int | None) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    from taxoclip.data.fetch import FetchStats, fetch_all
    from taxoclip.data.records import Record
    from taxoclip.taxonomy import Taxon

    taxon = Taxon("Animalia")
    records = (Record(str(i), taxon, "bench", u, url=u) for i, u in enumerate(urls))
    stats = FetchStats()
    results = fetch_all(records, out / "journal.sqlite", concurrency=concurrency, per_host_rate=None,
                        timeout=10, retries=2, stats=stats)
    ok = 0
    if resize is None:
        for _, data, err in results:
            ok += err is None
        return {"ok": ok, "failed": stats.failed}
    def squash(item):
        from PIL import Image

        rec, data, err = item
        if err is not None:
            return rec, None
        im = Image.open(io.BytesIO(data))
        im.draft("RGB", (resize, resize))  # JPEG: decode at a reduced scale when it is big enough
        im = im.convert("RGB").resize((resize, resize), Image.BOX)  # area downscaling, as both tools
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=95)
        return rec, buf.getvalue()

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime = len(data), int(time.time())
        tar.addfile(info, io.BytesIO(data))
        tar.members.clear()  # TarFile remembers every member it wrote: memory would grow with the input

    # webdataset layout (<key>.jpg + <key>.txt in a tar), written with tarfile: importing
    # webdataset would import torch, which costs more than fetching 2,000 images.
    with ThreadPoolExecutor(2) as pool, tarfile.open(out / "shard-00000.tar", "w") as tar:
        window: list = []

        def drain(keep: int) -> None:
            nonlocal ok
            while len(window) > keep:  # bounded: at most 64 images wait for the pool
                rec, jpg = window.pop(0).result()
                if jpg is not None:
                    key = f"{int(rec.source_id):09d}"
                    add(tar, key + ".jpg", jpg)
                    add(tar, key + ".txt", b"x")
                    ok += 1

        for item in results:
            window.append(pool.submit(squash, item))
            drain(64)
        drain(0)
    return {"ok": ok, "failed": stats.failed}


def write_dwca(urls: list[str], root: Path) -> Path:
    """A GBIF-style Darwin Core archive folder naming the URLs (input for `taxoclip data build`)."""
    root.mkdir(parents=True, exist_ok=True)
    dwc, dc = "http://rs.tdwg.org/dwc/terms/", "http://purl.org/dc/terms/"
    (root / "meta.xml").write_text(
        '<archive xmlns="http://rs.tdwg.org/dwc/text/">'
        '<core encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" '
        f'ignoreHeaderLines="1" rowType="{dwc}Occurrence"><files><location>occurrence.txt</location></files>'
        f'<id index="0"/><field index="0" term="{dwc}occurrenceID"/><field index="1" term="{dwc}kingdom"/>'
        f'<field index="2" term="{dwc}genus"/><field index="3" term="{dwc}specificEpithet"/></core>'
        '<extension encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" '
        'ignoreHeaderLines="1" rowType="http://rs.gbif.org/terms/1.0/Multimedia">'
        f'<files><location>multimedia.txt</location></files><coreid index="0"/>'
        f'<field index="1" term="{dc}type"/><field index="2" term="{dc}identifier"/></extension></archive>')
    with open(root / "occurrence.txt", "w") as occ, open(root / "multimedia.txt", "w") as media:
        occ.write("occurrenceID\tkingdom\tgenus\tspecificEpithet\n")
        media.write("occurrenceID\ttype\tidentifier\n")
        for i, u in enumerate(urls):
            occ.write(f"bench-{i}\tAnimalia\tGenus{i % 500}\tepithet{i % 7}\n")
            media.write(f"bench-{i}\tStillImage\t{u}\n")
    return root


# ----- measuring ------------------------------------------------------------------------------------
def count_tar_images(folder: Path) -> int:
    n = 0
    for tar in folder.rglob("*.tar"):
        with tarfile.open(tar) as t:
            n += sum(1 for m in t if m.name.endswith(".jpg"))
    return n


def find_img2dataset(arg: str | None) -> str | None:
    beside = Path(__file__).resolve().parents[2] / "venv-img2dataset" / "bin" / "img2dataset"
    for cand in (arg, os.environ.get("IMG2DATASET"), shutil.which("img2dataset"), str(beside)):
        if cand and Path(cand).exists():
            return cand
    return None


def build_cli_available() -> bool:
    try:
        return subprocess.run([sys.executable, "-m", "taxoclip", "data", "build", "--help"],
                              capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def run_tool(tool: str, urls: list[str], work: Path, args: argparse.Namespace, i2d: str | None) -> dict | None:
    out = work / f"{tool}-{len(urls)}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    url_file = out / "urls.txt"
    url_file.write_text("\n".join(urls) + "\n")
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled"}
    if tool in ("taxoclip-fetch", "taxoclip-resize"):
        resize = str(args.image_size) if tool == "taxoclip-resize" else "0"
        res = measure([sys.executable, str(HERE), "_worker", str(url_file), str(out), str(args.concurrency), resize],
                      env=env)
        images = json.loads(res["stdout"].strip().splitlines()[-1])["ok"] if res["rc"] == 0 else 0
    elif tool in ("taxoclip-build", "taxoclip-build-nodedup"):
        archive = write_dwca(urls, out / "archive")
        cmd = [sys.executable, "-m", "taxoclip", "data", "build", str(archive), "--out", str(out / "shards"),
               "--size", str(args.image_size), "--min-side", str(args.min_side), "--resize", args.resize,
               *args.build_args.split()]
        if tool == "taxoclip-build-nodedup":
            cmd += ["--dedup-threshold", "0"]
        res = measure(cmd, env=env)
        images = 0
        if res["rc"] == 0:  # images handled: written, or removed as near duplicates after all the work
            counts = json.loads((out / "shards" / "stats.json").read_text())["build"]["counts"]
            images = counts.get("written", 0) + counts.get("removed", 0)
    elif tool == "img2dataset":
        if i2d is None:
            return None
        mode = {"squash": "center_crop", "shorter-side": "keep_ratio"}[args.resize]
        cmd = [i2d, "--url_list", str(url_file), "--input_format", "txt", "--output_format", "webdataset",
               "--output_folder", str(out / "shards"), "--image_size", str(args.image_size),
               "--resize_mode", "no" if args.image_size == 0 else mode, "--min_image_size", str(args.min_side),
               "--encode_format", "jpg", "--encode_quality", "95", "--processes_count", str(args.i2d_processes),
               "--thread_count", str(args.i2d_threads), "--timeout", "10", "--retries", "2",
               "--number_sample_per_shard", "10000", "--distributor", "multiprocessing", "--enable_wandb", "False"]
        res = measure(cmd, env=env, cwd=out)
        images = count_tar_images(out / "shards") if res["rc"] == 0 else 0
    else:
        raise SystemExit(f"unknown tool {tool}")
    if res["rc"] != 0:
        print(f"{tool} failed (exit {res['rc']}):\n{res['stderr'][-3000:]}", file=sys.stderr)
    return {"tool": tool, "urls": len(urls), "images": images, "wall_s": round(res["wall"], 2),
            "images_per_s": round(images / res["wall"], 1), "peak_rss_mb": round(res["peak_rss_mb"], 1)}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        return serve(Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4]))
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        urls = Path(sys.argv[2]).read_text().split()
        resize = int(sys.argv[5]) or None
        print(json.dumps(worker_fetch(urls, Path(sys.argv[3]), int(sys.argv[4]), resize)))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--urls", type=int, default=2000)
    p.add_argument("--memory", action="store_true", help="also run 10x the URLs and compare peak RSS")
    p.add_argument("--tools", default="taxoclip-fetch,taxoclip-resize,taxoclip-build,taxoclip-build-nodedup,"
                                      "img2dataset")
    p.add_argument("--source-size", type=int, default=500, help="longer side of the served JPEGs")
    p.add_argument("--image-size", type=int, default=224, help="output size (both tools squash/resize to it)")
    p.add_argument("--concurrency", type=int, default=32, help="taxoclip requests in flight")
    p.add_argument("--i2d-processes", type=int, default=2)
    p.add_argument("--i2d-threads", type=int, default=16, help="per process: 2 x 16 = taxoclip's 32")
    p.add_argument("--resize", choices=["squash", "shorter-side"], default="squash",
                   help="taxoclip's resize mode; img2dataset runs the matching one (see above)")
    p.add_argument("--min-side", type=int, default=224, help="both tools reject images with a shorter side below")
    p.add_argument("--build-args", default="--concurrency 32 --per-host-rate 0",
                   help="extra arguments for `taxoclip data build`")
    p.add_argument("--latency", type=float, default=0.0, help="seconds the server waits before each answer")
    p.add_argument("--repeat", type=int, default=1, help="runs per tool; the fastest is reported")
    p.add_argument("--img2dataset", help="path of the img2dataset executable")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "taxoclip-bench")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    sizes = [args.urls, args.urls * 10] if args.memory else [args.urls]
    images = prepare_images(max(sizes), args.source_size, args.workdir)
    port_file = args.workdir / f"port-{os.getpid()}"
    server = subprocess.Popen([sys.executable, str(HERE), "_serve", str(images), str(port_file), str(args.latency)],
                              start_new_session=True)
    try:
        for _ in range(600):
            if port_file.exists() and port_file.read_text():
                break
            time.sleep(0.1)
        else:
            raise SystemExit("the image server did not start")
        base = f"http://127.0.0.1:{port_file.read_text()}"
        tools = [t.strip() for t in args.tools.split(",") if t.strip()]
        i2d = find_img2dataset(args.img2dataset)
        if "img2dataset" in tools and i2d is None:
            print("img2dataset not found: skipped (see the module docstring)", file=sys.stderr)
        if "taxoclip-build" in tools and not build_cli_available():
            print("`taxoclip data build` not available: skipped", file=sys.stderr)
            tools.remove("taxoclip-build")
        results = []
        for n in sizes:
            urls = [f"{base}/img/{i}.jpg" for i in range(n)]
            runs: dict[str, list[dict]] = {tool: [] for tool in tools}
            for _ in range(args.repeat):  # tools take turns
                for tool in tools:
                    r = run_tool(tool, urls, args.workdir, args, i2d)
                    if r:
                        runs[tool].append(r)
                        print(json.dumps(r), flush=True)
            for tool in tools:
                if runs[tool]:
                    best = max(runs[tool], key=lambda r: r["images_per_s"])
                    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs[tool])
                    best["runs_images_per_s"] = [r["images_per_s"] for r in runs[tool]]
                    results.append(best)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait()
        port_file.unlink(missing_ok=True)

    print(f"\n{'tool':<23} {'urls':>6} {'images':>7} {'wall s':>7} {'img/s':>7} {'peak RSS MB':>12}  img/s of each run")
    for r in results:
        print(f"{r['tool']:<23} {r['urls']:>6} {r['images']:>7} {r['wall_s']:>7} {r['images_per_s']:>7} "
              f"{r['peak_rss_mb']:>12}  {r['runs_images_per_s']}")
    by = {(r["tool"], r["urls"]): r for r in results}
    ref = {n: by.get(("img2dataset", n)) for n in sizes}
    for n in sizes:
        for tool in tools:
            if tool != "img2dataset" and (tool, n) in by and ref[n]:
                print(f"{tool} / img2dataset at {n} URLs: {by[tool, n]['images_per_s'] / ref[n]['images_per_s']:.2f}x "
                      "images per second")
    if args.memory:
        for tool in tools:
            small, big = by.get((tool, sizes[0])), by.get((tool, sizes[1]))
            if small and big:
                print(f"{tool}: peak RSS {small['peak_rss_mb']:.0f} MB at {sizes[0]} URLs, "
                      f"{big['peak_rss_mb']:.0f} MB at {sizes[1]} ({big['peak_rss_mb'] / small['peak_rss_mb']:.2f}x)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""fetch_all against a local HTTP server on 127.0.0.1 that misbehaves on purpose.

The server (`ImageServer`, also used by test_data_dwca.py) counts hits per path, so the tests
can assert that every reachable image was fetched exactly once and that a re-run with the
journal asks the network for nothing it already has.
"""
from __future__ import annotations

import collections
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

pytest.importorskip("aiohttp")

from taxoclip.data.fetch import FetchJournal, FetchStats, fetch_all  # noqa: E402
from taxoclip.data.records import Record  # noqa: E402
from taxoclip.errors import InputError  # noqa: E402
from taxoclip.taxonomy import Taxon  # noqa: E402


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default 5 drops SYNs under concurrency (a 1 s stall)
    daemon_threads = True


class ImageServer:
    """A threaded HTTP server on 127.0.0.1 serving `images` under misbehaving routes.

    /img/<i>       200 with image i            /slow/<i>     200 after `slow` seconds
    /missing/<i>   404                         /hang/<i>     200 after `hang` seconds (time out)
    /flaky/<i>     429 + Retry-After: 1, then 200 (per path)
    /busy/<i>      503 without Retry-After, then 200
    /redirect/<i>  302 to /img/<i>             /loop/<i>     302 to itself, forever
    /big/<i>       more bytes than any sane limit (a 2 MiB body)
    """

    def __init__(self, images: list[bytes], *, slow: float = 0.3, hang: float = 3.0):
        self.images, self.slow, self.hang = images, slow, hang
        self.hits: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                with server.lock:
                    server.hits[self.path] += 1
                    n = server.hits[self.path]
                route, _, arg = urlsplit(self.path).path.strip("/").partition("/")  # proxied: absolute URL
                i = int(arg.split(".")[0]) if arg.split(".")[0].isdigit() else 0
                if route == "img":
                    return self._image(i)
                if route == "slow":
                    time.sleep(server.slow)
                    return self._image(i)
                if route == "hang":
                    time.sleep(server.hang)
                    return self._image(i)
                if route == "flaky" and n == 1:
                    return self._status(429, {"Retry-After": "1"})
                if route == "flaky":
                    return self._image(i)
                if route == "busy" and n == 1:
                    return self._status(503)
                if route == "busy":
                    return self._image(i)
                if route == "redirect":
                    return self._status(302, {"Location": f"/img/{i}.jpg"})
                if route == "loop":
                    return self._status(302, {"Location": self.path})
                if route == "big":
                    return self._body(b"\xff" * (2 << 20), "image/jpeg")
                return self._status(404)

            def _image(self, i):
                self._body(server.images[i % len(server.images)], "image/jpeg")

            def _body(self, body, ctype):
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _status(self, code, headers=None):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, route: str, i: int = 0) -> str:
        return f"{self.base}/{route}/{i}.jpg"

    def __enter__(self) -> "ImageServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _record(url: str | None, i: int = 0, image: bytes | None = None) -> Record:
    return Record(source_id=f"occ-{i}", taxon=Taxon("Animalia", genus="Puma", epithet="concolor"),
                  data_source="test", origin=url or "inline", url=url, image=image)


# The server is on 127.0.0.1, which fetch_all refuses by default (see test_hostile_inputs.py).
FAST = dict(concurrency=8, per_host_rate=None, timeout=1.0, retries=2, backoff=0.05, max_bytes=1 << 20,
            allow_private_addresses=True)


def test_every_reachable_image_once_and_the_rest_reported(tmp_path, images):
    with ImageServer(images) as srv:
        urls = {
            "ok": [srv.url("img", i) for i in range(6)],
            "slow": [srv.url("slow", 6)],
            "flaky": [srv.url("flaky", 7)],
            "busy": [srv.url("busy", 8)],
            "redirect": [srv.url("redirect", 9)],
            "missing": [srv.url("missing", 1), srv.url("missing", 2)],
            "hang": [srv.url("hang", 3)],
            "loop": [srv.url("loop", 4)],
            "big": [srv.url("big", 5)],
        }
        records = [_record(u, i) for i, u in enumerate(u for group in urls.values() for u in group)]
        records.append(_record(None, 99, image=images[0]))  # already has bytes: passes through
        records.append(_record(None, 100))  # nothing at all
        stats = FetchStats()
        out = list(fetch_all(records, tmp_path / "journal.sqlite", stats=stats, **FAST))

    assert len(out) == len(records)
    assert sorted(id(r) for r, _, _ in out) == sorted(id(r) for r in records)  # each exactly once
    got = {r.url: (data, err) for r, data, err in out if r.url}
    index = {u: int(u.rsplit("/", 1)[1].split(".")[0]) for u in got}
    for group in ("ok", "slow", "flaky", "busy", "redirect"):
        for u in urls[group]:
            data, err = got[u]
            assert err is None, (u, err)
            assert data == images[index[u] % len(images)]
    assert got[urls["missing"][0]] == (None, "HTTP 404")
    assert got[urls["hang"][0]] == (None, "timeout after 3 attempts")
    assert got[urls["loop"][0]][1] == "more than 5 redirects"
    assert got[urls["big"][0]][1].startswith("too large")
    inline = {r.source_id: (data, err) for r, data, err in out if not r.url}
    assert inline == {"occ-99": (images[0], None), "occ-100": (None, "no URL")}

    # Server side: one successful response per reachable image, retries only where asked for.
    path = lambda u: u[len(srv.base):]  # noqa: E731
    for group in ("ok", "slow", "redirect"):
        assert all(srv.hits[path(u)] == 1 for u in urls[group])
    assert srv.hits[path(urls["flaky"][0])] == 2  # 429, then the image
    assert srv.hits[path(urls["busy"][0])] == 2  # 503, then the image
    assert srv.hits["/img/9.jpg"] == 1  # the redirect's target
    assert srv.hits[path(urls["missing"][0])] == 1  # a 404 is not retried
    assert srv.hits[path(urls["hang"][0])] == 3
    assert stats.fetched == 10 and stats.failed == 6 and stats.from_journal == 0


def test_rerun_with_journal_fetches_nothing_new_and_retries_transient_failures(tmp_path, images):
    journal = tmp_path / "journal.sqlite"
    with ImageServer(images, hang=1.5) as srv:
        records = [_record(srv.url("img", i), i) for i in range(8)]
        records += [_record(srv.url("missing", 1), 8), _record(srv.url("hang", 2), 9)]
        first = {r.url: err for r, _, err in fetch_all(records, journal, **{**FAST, "retries": 0})}
        assert first[srv.url("hang", 2)] == "timeout after 1 attempt"
        hits_before = srv.hits.copy()
        srv.hang = 0.0  # the slow host recovered

        stats = FetchStats()
        second = {r.url: (data, err) for r, data, err in fetch_all(records, journal, stats=stats, **FAST)}
    new_hits = srv.hits - hits_before
    assert new_hits == {"/hang/2.jpg": 1}  # only the transient failure was asked again
    assert second[srv.url("hang", 2)] == (images[2], None)
    assert second[srv.url("missing", 1)] == (None, "HTTP 404")  # remembered, not re-asked
    assert all(second[srv.url("img", i)] == (images[i], None) for i in range(8))
    assert stats.fetched == 1 and stats.from_journal == 9
    with FetchJournal(journal) as j:
        assert j.counts() == {"done": 9, "failed": 1, "transient": 0}
        assert list(j.failures()) == [(srv.url("missing", 1), "HTTP 404")]


def test_duplicate_urls_are_fetched_once(tmp_path, images):
    with ImageServer(images) as srv:
        records = [_record(srv.url("slow", 1), i) for i in range(5)]
        out = list(fetch_all(records, tmp_path / "j.sqlite", **FAST))
    assert srv.hits["/slow/1.jpg"] == 1
    assert [err for _, _, err in out] == [None] * 5 and all(d == images[1] for _, d, _ in out)


def test_per_host_rate_limit_spaces_requests(tmp_path, images):
    with ImageServer(images) as srv:
        records = [_record(srv.url("img", i), i) for i in range(12)]
        t0 = time.monotonic()
        out = list(fetch_all(records, tmp_path / "j.sqlite", **{**FAST, "per_host_rate": 10.0}))
        elapsed = time.monotonic() - t0
    assert all(err is None for _, _, err in out)
    # A burst of 10, then one request per 0.1 s: the last two cannot start before ~0.2 s.
    assert elapsed >= 0.15


def test_input_is_streamed_through_a_bounded_window(tmp_path, images):
    """The input iterator is never read far ahead of what the consumer has taken."""
    pulled = 0

    def gen():
        nonlocal pulled
        for i in range(400):
            pulled += 1
            yield _record(None, i, image=b"x")

    it = fetch_all(gen(), tmp_path / "j.sqlite", concurrency=4)
    for _ in range(10):
        next(it)
    time.sleep(0.2)
    assert pulled <= 10 + 64 + 64  # consumed + window + one read-ahead batch
    it.close()
    assert pulled < 400


def test_killed_run_resumes_without_refetching(tmp_path, images):
    """A process killed mid-run leaves a journal from which a re-run serves every finished image."""
    journal = tmp_path / "journal.sqlite"
    with ImageServer(images, slow=0.05) as srv:
        urls = [srv.url("slow", i) for i in range(40)]
        script = textwrap.dedent(f"""
            import os, sys
            from taxoclip.data.fetch import fetch_all
            from taxoclip.data.records import Record
            from taxoclip.taxonomy import Taxon
            urls = {urls!r}
            recs = [Record(str(i), Taxon("Animalia"), "t", u, url=u) for i, u in enumerate(urls)]
            for n, (r, data, err) in enumerate(fetch_all(recs, {str(journal)!r}, concurrency=2, per_host_rate=None,
                                                                 allow_private_addresses=True)):
                assert err is None, err
                print(r.url, flush=True)
                if n == 9:
                    os._exit(9)  # like kill -9: no cleanup, no commit on the way out
        """)
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 9, proc.stderr
        yielded = proc.stdout.split()
        assert len(yielded) == 10
        hits_before = srv.hits.copy()
        records = [_record(u, i) for i, u in enumerate(urls)]
        out = {r.url: (data, err) for r, data, err in fetch_all(records, journal, **FAST)}
    assert all(err is None for _, err in out.values())
    new_hits = srv.hits - hits_before
    assert not set(yielded) & {srv.base + p for p in new_hits}  # nothing yielded before the kill is fetched again
    assert all(n == 1 for n in new_hits.values())


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="concurrency"):
        next(fetch_all([], tmp_path / "unused.sqlite", concurrency=0))
    (tmp_path / "junk.sqlite").write_bytes(b"not a database, just text" * 100)
    with pytest.raises(InputError, match="junk.sqlite: not a fetch journal"):
        next(fetch_all([_record(None, image=b"x")], tmp_path / "junk.sqlite"))


def test_proxy_from_the_environment(tmp_path, images, monkeypatch):
    """http_proxy/no_proxy are honoured as urllib reads them (the server plays the proxy)."""
    for var in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    with ImageServer(images) as srv:
        monkeypatch.setenv("http_proxy", srv.base)
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        records = [_record("http://images.invalid/img/1.jpg", 1), _record(srv.url("img", 2), 2)]
        out = {r.url: (data, err) for r, data, err in fetch_all(records, tmp_path / "j.sqlite", **FAST)}
    assert out["http://images.invalid/img/1.jpg"] == (images[1], None)
    assert srv.hits["http://images.invalid/img/1.jpg"] == 1  # asked of the proxy, by absolute URL
    assert out[srv.url("img", 2)] == (images[2], None) and srv.hits["/img/2.jpg"] == 1  # no_proxy: direct


def test_an_error_in_the_input_reaches_the_caller(tmp_path):
    def broken():
        yield _record(None, 1, image=b"x")
        raise InputError("archive.zip/occurrence.txt: malformed row")

    with pytest.raises(InputError, match="malformed row"):
        list(fetch_all(broken(), tmp_path / "j.sqlite"))

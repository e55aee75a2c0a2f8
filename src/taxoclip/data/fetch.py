"""Fetching record images over HTTP(S): bounded, polite, retried and resumable.

`fetch_all` streams records through a bounded window, downloads their `url`s with asyncio +
aiohttp on one background thread, and yields every record exactly once with its bytes or the
reason it failed. Why asyncio rather than threads: on a 2-core machine one event loop with
aiohttp's C HTTP parser moves more images per CPU-second than dozens of threads contending for
the GIL (img2dataset's design), and it makes per-host rate limits and shared backoff trivial.

Resuming: the journal is one sqlite file holding, per URL, its state and (once fetched) its
bytes. Bytes and the "done" mark are written in the same transaction, committed before the
record is yielded; a re-run with the same journal serves successes from the file without
touching the network, repeats permanent failures (404, too large) without asking again, and
retries transient ones (timeouts, 429, 5xx, connection errors).

Hostile URLs: an archive is downloaded input, and its media URLs may point anywhere. Only
http(s) is fetched; size, redirects and time per attempt are capped; and unless
`allow_private_addresses` is set (`taxoclip data build --allow-private-addresses`), no request
goes to a loopback, link-local, private or otherwise non-public address. The check runs on every
hop of a redirect chain (redirects are followed here, not by aiohttp) and on every address a
name resolves to, at connection time (the connector's resolver refuses them), so a name that
resolves differently the second time cannot slip through. Refusals are not journaled: a re-run
with the option set asks again.
"""
from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import logging
import queue
import random
import socket
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator
import urllib.request
from urllib.parse import urlsplit

from ..errors import InputError
from .records import Record

__all__ = ["fetch_all", "FetchJournal", "FetchStats", "DEFAULT_PER_HOST_RATE", "USER_AGENT", "address_refusal"]

log = logging.getLogger(__name__)

DEFAULT_PER_HOST_RATE = 20.0  # requests per second to one host: polite to a museum's server
USER_AGENT = "taxoclip/0.1 (+https://github.com/taxoclip/taxoclip; Tree-of-Life dataset builder)"
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504, 507, 509, 520, 521, 522, 523, 524})
_DONE, _FAILED, _TRANSIENT = 1, 2, 3  # journal states; only _TRANSIENT is retried on a re-run
_REFUSED = 0  # an address refused by policy: not journaled, so a re-run with the option set asks again
_REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_ALLOW_HINT = "pass --allow-private-addresses to fetch from it"
Result = tuple[Record, "bytes | None", "str | None"]


@dataclass
class FetchStats:
    """Counters of one `fetch_all` run (pass one in to read them while or after iterating)."""

    fetched: int = 0  # downloaded now
    from_journal: int = 0  # served from an earlier run's journal, no request made
    failed: int = 0  # yielded with an error (permanent or after all retries)
    retries: int = 0  # extra attempts made
    bytes: int = 0  # bytes downloaded now
    refused: int = 0  # URLs not asked for: a loopback, link-local, private or non-public address
    errors: dict[str, int] = field(default_factory=dict)  # reason -> count


class FetchJournal:
    """The resumable state of a fetch: one sqlite row per URL with its state, error and bytes.

    Bytes live in the same row as the "done" mark, so a killed run never leaves a URL marked
    done without its image. Delete the file once a build is finished to reclaim the space.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()  # one writer transaction at a time, from any thread
        try:
            self._db.execute("PRAGMA page_size=65536")  # images are blobs: 3x less CPU than 4 KiB pages
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # survives a killed process; cheap commits
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS fetch (url TEXT PRIMARY KEY, state INTEGER NOT NULL,"
                " error TEXT, attempts INTEGER NOT NULL DEFAULT 0, data BLOB, updated REAL)")
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise InputError(f"{self.path}: not a fetch journal ({e}); delete it to start over") from None

    def get(self, url: str) -> tuple[int, str | None, bytes | None] | None:
        """(state, error, bytes) of a URL, or None if it was never tried."""
        return self._db.execute("SELECT state, error, data FROM fetch WHERE url = ?", (url,)).fetchone()

    def put_many(self, rows: list[tuple[str, int, str | None, int, bytes | None]]) -> None:
        """Write (url, state, error, attempts, bytes) rows in one transaction."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT INTO fetch (url, state, error, attempts, data, updated) VALUES (?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT(url) DO UPDATE SET state = excluded.state, error = excluded.error,"
                    " attempts = fetch.attempts + excluded.attempts, data = excluded.data,"
                    " updated = excluded.updated",
                    [(*r, now) for r in rows])
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def counts(self) -> dict[str, int]:
        """How many URLs are done, failed for good, or failed transiently (retried on a re-run)."""
        names = {_DONE: "done", _FAILED: "failed", _TRANSIENT: "transient"}
        out = dict.fromkeys(names.values(), 0)
        for state, n in self._db.execute("SELECT state, COUNT(*) FROM fetch GROUP BY state"):
            out[names.get(state, str(state))] = n
        return out

    def failures(self) -> Iterator[tuple[str, str]]:
        """(url, reason) of every URL that has no image, for error reports."""
        yield from self._db.execute("SELECT url, error FROM fetch WHERE state != ? ORDER BY url", (_DONE,))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "FetchJournal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fetch_all(
    records: Iterable[Record],
    journal_path: str | Path,
    *,
    concurrency: int = 16,
    per_host_rate: float | None = DEFAULT_PER_HOST_RATE,
    timeout: float = 30.0,
    retries: int = 2,
    max_bytes: int = 32 << 20,
    max_redirects: int = 5,
    backoff: float = 0.5,
    max_retry_after: float = 120.0,
    user_agent: str = USER_AGENT,
    allow_private_addresses: bool = False,
    stats: FetchStats | None = None,
) -> Iterator[Result]:
    """Yield (record, bytes, None) or (record, None, reason) for every record, in completion order.

    - concurrency: requests in flight at once; the input is read through a window of
      `max(64, 4 * concurrency)` records, so memory does not grow with the input.
    - per_host_rate: requests per second to any one host (token bucket, burst of one second);
      None for no limit. A 429/503 with Retry-After pauses that host for everyone.
    - timeout: seconds for one attempt (connect + body); retries: extra attempts after the
      first on 408/429/5xx, timeouts and connection errors, with exponential backoff from
      `backoff` seconds plus jitter, or Retry-After when the server gives one (up to
      `max_retry_after`, beyond which the URL is left for a re-run).
    - max_bytes: larger bodies fail with "too large"; max_redirects: longer chains fail. The
      timeout covers a whole attempt: every redirect hop and the body.
    - allow_private_addresses: also fetch from loopback, link-local, private and other
      non-public addresses (a museum's intranet, a test server). Off by default: an archive's
      URLs are not trusted to stay on the public internet (see the module's notes).
    Only http(s) URLs are fetched; others fail with "not an http(s) URL".
    Records without a URL pass through: their own `image`, or the reason "no URL".
    Duplicate URLs are fetched once. The journal (a sqlite file) makes a re-run resume.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    if per_host_rate is not None and per_host_rate <= 0:
        raise ValueError(f"per_host_rate must be positive or None, got {per_host_rate}")
    import aiohttp  # noqa: F401  (fail here, in the caller's thread, if it is missing)

    journal, writer = FetchJournal(journal_path), FetchJournal(journal_path)
    engine = _Engine(journal, writer, stats if stats is not None else FetchStats(), concurrency=concurrency,
                     per_host_rate=per_host_rate, timeout=timeout, retries=retries, max_bytes=max_bytes,
                     max_redirects=max_redirects, backoff=backoff, max_retry_after=max_retry_after,
                     user_agent=user_agent, allow_private=allow_private_addresses)
    out: queue.SimpleQueue = queue.SimpleQueue()
    thread = threading.Thread(target=engine.run, args=(iter(records), out), name="taxoclip-fetch", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is _END:
                break
            if isinstance(item, _Failure):
                raise item.error
            taken = 0  # results arrive in batches; slots go back in small groups (few thread hops)
            for result in item:
                yield result
                taken += 1
                if taken == 16:
                    engine.consumed(taken)
                    taken = 0
            engine.consumed(taken)
    finally:
        engine.stop()
        thread.join()
        journal.close()
        writer.close()


_END = object()


@dataclass
class _Failure:
    error: BaseException


class _HostLimiter:
    """A per-host token bucket (GCRA form: one reservation per request), pausable by Retry-After."""

    def __init__(self, rate: float | None, host: str = ""):
        self.host = host
        self.interval = 1.0 / rate if rate else 0.0
        self.tolerance = max(0.0, rate - 1.0) * self.interval if rate else 0.0  # burst of `rate`
        self.tat = 0.0  # theoretical arrival time of the next request
        self.paused_until = 0.0
        self.proxies: dict[str, str | None] = {}  # scheme -> proxy URL (None: direct)

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.interval:
            ready = max(self.tat - self.tolerance, now, self.paused_until)
            self.tat = max(self.tat, ready) + self.interval
        else:
            ready = max(now, self.paused_until)
        while ready > loop.time():
            await asyncio.sleep(ready - loop.time())
            ready = max(ready, self.paused_until)  # a 429 may have paused the host meanwhile

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, asyncio.get_running_loop().time() + seconds)

    def proxy(self, scheme: str) -> str | None:
        """The proxy for this host and scheme (looked up once)."""
        if scheme not in self.proxies:
            self.proxies[scheme] = _proxy_for(scheme, self.host)
        return self.proxies[scheme]


class _Engine:
    """The event-loop side of `fetch_all`: feeds the window, fetches, journals, hands results over."""

    def __init__(self, journal: FetchJournal, writer: FetchJournal, stats: FetchStats, *, concurrency: int,
                 per_host_rate: float | None, timeout: float, retries: int, max_bytes: int, max_redirects: int,
                 backoff: float, max_retry_after: float, user_agent: str, allow_private: bool = False):
        # Two connections to the journal: lookups on the loop thread, commits on a worker thread
        # (a WAL checkpoint's fsync must not stall the downloads).
        self.journal, self.writer, self.stats = journal, writer, stats
        self.concurrency, self.rate, self.timeout, self.retries = concurrency, per_host_rate, timeout, retries
        self.max_bytes, self.max_redirects, self.backoff = max_bytes, max_redirects, backoff
        self.max_retry_after, self.user_agent = max_retry_after, user_agent
        self.allow_private = allow_private
        self.proxied_refusals: dict[str, str | None] = {}  # host -> refusal, for names a proxy resolves
        self.window_size = max(64, 4 * concurrency)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.main_task: asyncio.Task | None = None
        self._stopping = False

    # ----- called from the consumer's thread -----------------------------------------------
    def consumed(self, n: int) -> None:
        """The consumer took n results: their window slots are free again."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._release, n)
            except RuntimeError:  # loop closed between the check and the call
                pass

    def _release(self, n: int) -> None:
        for _ in range(n):
            self.window.release()

    def stop(self) -> None:
        """The consumer is gone (done, closed early or failed): cancel what is in flight."""
        self._stopping = True
        loop, task = self.loop, self.main_task
        if loop is not None and task is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:
                pass

    # ----- the loop thread -----------------------------------------------------------------
    def run(self, records: Iterator[Record], out: queue.SimpleQueue) -> None:
        self.out = out
        self.ready: list[Result] = []
        self.handover_scheduled = False
        try:
            asyncio.run(self._main(records))
        except asyncio.CancelledError:
            pass
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer, raised there
            out.put(_Failure(e))
        if self.ready:
            out.put(self.ready)
        out.put(_END)

    async def _main(self, records: Iterator[Record]) -> None:
        import aiohttp

        self.loop = asyncio.get_running_loop()
        self.main_task = asyncio.current_task()
        if self._stopping:
            return
        self.window = asyncio.Semaphore(self.window_size)
        self.requests = asyncio.Semaphore(self.concurrency)
        self.hosts: dict[str, _HostLimiter] = {}
        self.inflight: dict[str, asyncio.Future] = {}
        self.pending: list[tuple[tuple, asyncio.Future]] = []
        self.pending_bytes = 0
        self.flush_wanted = asyncio.Event()
        self.resolver = None if self.allow_private else _GuardedResolver()
        connector = aiohttp.TCPConnector(limit=self.concurrency, ttl_dns_cache=300, resolver=self.resolver)
        timeout = aiohttp.ClientTimeout(total=self.timeout, sock_connect=min(self.timeout, 15.0))
        # trust_env=False: aiohttp would look proxies and .netrc up in a thread on every request;
        # `_proxy_for` reads the same environment once per host.
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False,
                                             headers={"User-Agent": self.user_agent}) as self.session:
                committer = asyncio.create_task(self._committer())
                tasks: set[asyncio.Task] = set()
                try:
                    await self._feed(records, tasks)
                    while tasks:
                        await asyncio.wait(tasks)
                finally:
                    for t in tasks:
                        t.cancel()
                    committer.cancel()
                    await asyncio.gather(*tasks, committer, return_exceptions=True)
                    self._commit(self._take_pending())  # finished but not committed yet
        finally:
            if self.resolver is not None:  # the connector closes only a resolver it made
                await self.resolver.close()

    async def _feed(self, records: Iterator[Record], tasks: set[asyncio.Task]) -> None:
        """Start one task per record, never more than the window allows."""
        buffer: deque[Record] = deque()
        while True:
            await self.window.acquire()
            if not buffer:
                # The input may be slow (parsing a huge archive): read it off the loop.
                buffer.extend(await asyncio.to_thread(lambda: list(islice(records, 64))))
                if not buffer:
                    return
            task = asyncio.create_task(self._handle(buffer.popleft()))
            tasks.add(task)
            task.add_done_callback(self._task_done(tasks))

    def _task_done(self, tasks: set[asyncio.Task]):
        def done(task: asyncio.Task) -> None:
            tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                self.out.put(_Failure(task.exception()))
                self.main_task.cancel()
        return done

    def _emit(self, record: Record, data: bytes | None, error: str | None) -> None:
        if error is not None:
            self.stats.failed += 1
            self.stats.errors[error] = self.stats.errors.get(error, 0) + 1
        self.ready.append((record, data, error))
        if not self.handover_scheduled:  # everything ready in this loop iteration goes at once
            self.handover_scheduled = True
            self.loop.call_soon(self._hand_over)

    def _hand_over(self) -> None:
        self.handover_scheduled = False
        batch, self.ready = self.ready, []
        if batch:
            self.out.put(batch)

    async def _handle(self, record: Record) -> None:
        url = (record.url or "").strip()
        if not url:
            self._emit(record, record.image, None if record.image is not None else "no URL")
            return
        if url in self.inflight:  # the same URL twice: one request, both records answered
            data, error = await asyncio.shield(self.inflight[url])
            self._emit(record, data, error)
            return
        row = self.journal.get(url)
        if row is not None and row[0] != _TRANSIENT:
            self.stats.from_journal += 1
            self._emit(record, row[2], row[1] if row[0] != _DONE else None)
            return
        done = self.loop.create_future()
        self.inflight[url] = done
        try:
            data, error, state, attempts = await self._fetch(url)
            if state == _REFUSED:
                self.stats.refused += 1
            else:
                await self._journal(url, state, error, attempts, data)
            done.set_result((data, error))
        except BaseException as e:
            done.set_exception(e)
            done.exception()  # retrieved: waiters get it, no "never retrieved" warning
            raise
        finally:
            del self.inflight[url]
        if error is None:
            self.stats.fetched += 1
            self.stats.bytes += len(data)
        self._emit(record, data, error)

    # ----- one URL ----------------------------------------------------------------------------
    async def _fetch(self, url: str) -> tuple[bytes | None, str | None, int, int]:
        """(bytes, error, journal state, attempts) after up to 1 + retries attempts."""
        import aiohttp

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return None, "not an http(s) URL", _FAILED, 0
        host = self._host(parts.hostname)
        reason = "error"
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.retries += 1
            delay = None
            await host.acquire()
            async with self.requests:
                try:
                    data, reason, state, status, delay = await asyncio.wait_for(self._follow(url), self.timeout)
                    if state != _TRANSIENT:
                        return data, reason, state, attempt + 1
                    if delay is not None and delay > self.max_retry_after:
                        return None, f"{reason} (Retry-After {delay:.0f} s)", _TRANSIENT, attempt + 1
                    if delay is None and status == 429:
                        delay = self._backoff(attempt)
                    if delay is not None:  # the host asked everyone to slow down
                        host.pause(delay)
                except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as e:
                    return None, f"invalid URL ({type(e).__name__})", _FAILED, attempt + 1
                except asyncio.TimeoutError:
                    reason = "timeout"
                except aiohttp.ClientConnectorError as e:
                    if isinstance(e.os_error, _Refused):  # the resolver refused where the name led
                        return None, f"refused: {e.os_error} ({_ALLOW_HINT})", _REFUSED, attempt + 1
                    reason = f"connection error ({type(e).__name__})"
                except aiohttp.ClientResponseError as e:  # malformed response …
                    reason = f"bad response ({e.status or type(e).__name__})"
                except (aiohttp.ClientError, OSError) as e:
                    reason = f"connection error ({type(e).__name__})"
            if attempt < self.retries:
                await asyncio.sleep(self._backoff(attempt) if delay is None else delay)
        n = self.retries + 1
        return None, f"{reason} after {n} attempt{'s' if n > 1 else ''}", _TRANSIENT, n

    async def _follow(self, url: str) -> tuple[bytes | None, str | None, int, int, float | None]:
        """One attempt: GET `url`, following redirects here so that every hop's target is checked.

        Returns (bytes, error, journal state, last HTTP status, Retry-After seconds or None).
        """
        from yarl import URL

        target: str | URL = url
        for _ in range(self.max_redirects + 1):
            u = target if isinstance(target, URL) else URL(target)
            if u.scheme not in ("http", "https") or not u.host:
                return None, f"redirected to a non-http(s) URL ({u.scheme or 'no scheme'})", _FAILED, 0, None
            proxy = self._host(u.host).proxy(u.scheme)
            refusal = await self._refusal(u.host, proxied=proxy is not None)
            if refusal is not None:
                return None, f"refused: {refusal} ({_ALLOW_HINT})", _REFUSED, 0, None
            if proxy is not None and self.resolver is not None:
                self.resolver.trusted.add(URL(proxy).host or "")  # the proxy itself may sit on the intranet
            async with self.session.get(target, allow_redirects=False, proxy=proxy) as resp:
                if resp.status in _REDIRECT_STATUS and resp.headers.get("Location"):
                    try:
                        target = resp.url.join(URL(resp.headers["Location"]))
                    except ValueError:
                        return None, "bad redirect (unreadable Location)", _FAILED, resp.status, None
                    continue
                if 200 <= resp.status < 300 and resp.status != 204:
                    data, error = await self._read(resp)
                    return data, error, _DONE if error is None else _FAILED, resp.status, None
                reason = f"HTTP {resp.status}"
                if resp.status not in _RETRY_STATUS:
                    return None, reason, _FAILED, resp.status, None
                return None, reason, _TRANSIENT, resp.status, _retry_after(resp.headers.get("Retry-After"))
        return None, f"more than {self.max_redirects} redirects", _FAILED, 0, None

    def _host(self, name: str) -> _HostLimiter:
        host = self.hosts.get(name)
        if host is None:
            host = self.hosts[name] = _HostLimiter(self.rate, name)
        return host

    async def _refusal(self, host: str, proxied: bool) -> str | None:
        """Why a request to `host` must not be made, or None.

        IP literals are checked here (the connector does not resolve them). Names are checked by
        the connector's resolver when the connection is direct; through a proxy, which resolves
        them itself, they are resolved here too (a name that does not resolve here is left to it).
        """
        if self.allow_private:
            return None
        if _looks_numeric(host):
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                return f"{host} is not a canonical IP address"
            return address_refusal(address)
        if not proxied:
            return None
        if host not in self.proxied_refusals:
            try:
                infos = await self.loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            except OSError:
                infos = []
            why = next((w for w in (address_refusal(i[4][0]) for i in infos) if w), None)
            self.proxied_refusals[host] = f"{host} resolves to {why}" if why else None
        return self.proxied_refusals[host]

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with "equal jitter": half fixed, half random, capped at a minute."""
        step = min(60.0, self.backoff * 2 ** attempt)
        return step / 2 + random.uniform(0, step / 2)

    async def _read(self, resp: Any) -> tuple[bytes | None, str | None]:
        size = resp.content_length
        if size is not None and size > self.max_bytes:
            return None, f"too large ({size} bytes > {self.max_bytes})"
        if size is not None:
            data = await resp.read()
        else:  # unknown length: stop reading as soon as the limit is passed
            buf = bytearray()
            async for chunk in resp.content.iter_chunked(1 << 16):
                buf += chunk
                if len(buf) > self.max_bytes:
                    return None, f"too large (> {self.max_bytes} bytes)"
            data = bytes(buf)
        if not data:
            return None, "empty response"
        return data, None

    # ----- journal ------------------------------------------------------------------------------
    async def _journal(self, url: str, state: int, error: str | None, attempts: int, data: bytes | None) -> None:
        """Queue a journal row; returns once it is committed (so a yielded image is durable)."""
        fut = self.loop.create_future()
        self.pending.append(((url, state, error, attempts, data), fut))
        self.pending_bytes += len(data or b"")
        if len(self.pending) >= 128 or self.pending_bytes >= (16 << 20):
            self.flush_wanted.set()
        await fut

    async def _committer(self) -> None:
        """Commit queued rows in batches, off the loop: every 50 ms, or sooner when a batch is large."""
        while True:
            try:
                await asyncio.wait_for(self.flush_wanted.wait(), 0.05)
            except asyncio.TimeoutError:
                pass
            self.flush_wanted.clear()
            batch = self._take_pending()
            if batch:
                await asyncio.to_thread(self._commit, batch)
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)

    def _take_pending(self) -> list[tuple[tuple, asyncio.Future]]:
        batch, self.pending, self.pending_bytes = self.pending, [], 0
        return batch

    def _commit(self, batch: list[tuple[tuple, asyncio.Future]]) -> None:
        if batch:
            self.writer.put_many([row for row, _ in batch])


def address_refusal(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address is no place to download from ("loopback address 127.0.0.1"), or None.

    Refused: loopback, link-local (169.254.169.254 is the cloud metadata service), unspecified,
    multicast, private, reserved and anything else not globally routable (shared 100.64/10 …).
    IPv4-mapped and NAT64 IPv6 addresses are judged by the IPv4 address they carry.
    """
    try:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    except ValueError:
        return f"{address} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    for kind, hit in (("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
                      ("unspecified", ip.is_unspecified), ("multicast", ip.is_multicast),
                      ("private", ip.is_private), ("reserved", ip.is_reserved), ("non-public", not ip.is_global)):
        if hit:
            return f"{kind} address {address}"
    return None


def _looks_numeric(host: str) -> bool:
    """Whether a URL host is meant as an IP address (aiohttp's test: it does not resolve these)."""
    return ":" in host or host.replace(".", "").isdigit()


class _Refused(OSError):
    """Raised by `_GuardedResolver`; aiohttp hands it back as a ClientConnectorError's os_error."""


class _GuardedResolver:
    """aiohttp's resolver, refusing a name when any address it resolves to is not public.

    It runs when the connection is made, so it judges the addresses actually connected to (no
    second lookup that could answer differently). `trusted` holds the proxies' host names.
    """

    def __init__(self) -> None:
        from aiohttp.resolver import DefaultResolver

        self.inner = DefaultResolver()
        self.trusted: set[str] = set()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list:
        results = await self.inner.resolve(host, port, family)
        if host not in self.trusted:
            for r in results:
                why = address_refusal(r["host"])
                if why:
                    raise _Refused(f"{host} resolves to {why}")
        return results

    async def close(self) -> None:
        await self.inner.close()


def _proxy_for(scheme: str, host: str) -> str | None:
    """The proxy from http_proxy/https_proxy (honouring no_proxy) for a host, as urllib finds it."""
    proxy = urllib.request.getproxies().get(scheme)
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    return proxy


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())

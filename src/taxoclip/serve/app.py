"""The HTTP API and the web page (FastAPI). Routes parse, call the service, and format.

    POST /v1/predict   photos (multipart `files`, repeated) -> per photo: candidates with lineage and score
    POST /v1/embed     photos -> per photo: the embedding
    GET  /v1/taxa?q=   vocabulary search by the start of a scientific or common name
    GET  /v1/models    the loaded model and vocabulary;  GET /healthz, /readyz, /metrics;  GET / the page
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, File, Form, HTTPException, Query, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from ..errors import InputError
from ..io.budget import DecodeBudget, default_budget
from ..taxonomy import Rank
from .batching import QueueFull
from .uploads import UploadLimits, UploadRejected, decode_upload

__all__ = ["ServeSettings", "create_app"]

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
API_KEY_ENV = "TAXOCLIP_API_KEY"
# Metrics label routes by name; any other path counts as "other" (a scanner's random URLs must
# not grow the label set, and with it the server's memory).
ROUTES = frozenset({"/v1/predict", "/v1/embed", "/v1/taxa", "/v1/models", "/healthz", "/readyz"})


def _route(path: str) -> str:
    return path if path in ROUTES else "other"


@dataclass
class ServeSettings:
    model: str | None = None
    device: str = "auto"
    precision: str = "auto"
    max_batch: int = 64
    max_wait_ms: float = 25.0
    max_queue: int = 512  # photos waiting; beyond it requests get 503 + Retry-After
    request_timeout_s: float = 60.0
    api_key: str | None = None  # or the TAXOCLIP_API_KEY environment variable
    cors_origins: list[str] = field(default_factory=list)
    limits: UploadLimits = field(default_factory=UploadLimits)
    max_k: int = 100


def create_app(settings: ServeSettings | None = None, service=None) -> FastAPI:
    """The app; the model loads at start-up (`/readyz` says when), or use a given `service`."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    settings = settings or ServeSettings()
    api_key = settings.api_key or os.environ.get(API_KEY_ENV) or None
    registry = CollectorRegistry()
    requests = Counter("taxoclip_requests", "HTTP requests", ["route", "status"], registry=registry)
    latency = Histogram("taxoclip_request_seconds", "Request latency", ["route"], registry=registry,
                        buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
    photos = Counter("taxoclip_photos", "Photos processed", ["outcome"], registry=registry)
    batch_sizes = Histogram("taxoclip_batch_photos", "Photos per model batch", registry=registry,
                            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
    batch_seconds = Histogram("taxoclip_batch_seconds", "Time the model takes for one batch", registry=registry,
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
    depth = Gauge("taxoclip_queue_photos", "Photos waiting for the model", registry=registry)
    state: dict = {"service": service}
    budget = DecodeBudget(settings.limits.max_decode_memory or default_budget())  # shared by the decoding threads

    async def lifespan(app: FastAPI):
        owned = state["service"] is None  # a service given by the caller is the caller's to stop
        if owned:
            from .service import IdentificationService

            state["service"] = await run_in_threadpool(
                IdentificationService, settings.model, device=settings.device, precision=settings.precision,
                max_batch=settings.max_batch, max_wait_s=settings.max_wait_ms / 1000, max_queue=settings.max_queue)
        state["service"].batcher.start()
        yield
        if owned:
            state["service"].batcher.stop()

    app = FastAPI(title="taxoclip", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Identify species across the tree of life from photos.")
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"])

    app.add_middleware(BodyLimit, limit=settings.limits.max_request_bytes)

    app.add_middleware(Guard, api_key=api_key, requests=requests, latency=latency)

    def service_or_503():
        svc = state["service"]
        if svc is None:
            raise HTTPException(503, "model is loading", headers={"Retry-After": "5"})
        return svc

    async def decode_all(svc, files: list[UploadFile]) -> tuple[list, list]:
        """(per upload: tensor or None, per upload: error or None), decoded in worker threads."""
        if not files:
            raise HTTPException(422, "no files: send photos in the multipart field `files`")
        if len(files) > settings.limits.max_files:
            raise HTTPException(413, f"{len(files)} files in one request, at most {settings.limits.max_files}")

        async def one(f: UploadFile):
            name = _safe_name(f.filename)
            data = await f.read(settings.limits.max_bytes + 1)
            try:
                return await run_in_threadpool(decode_upload, name, data, svc.model.preprocess, settings.limits,
                                               budget=budget), None
            except UploadRejected as e:
                return None, str(e)
        done = await asyncio.gather(*(one(f) for f in files))
        return [t for t, _ in done], [e for _, e in done]

    async def run_batched(svc, tensors: list, key) -> list:
        ok = [t for t in tensors if t is not None]
        if not ok:
            return []
        try:
            fut = svc.batcher.submit(ok, key)  # stacked in the batch thread (torch work stays there)
        except QueueFull as e:
            raise HTTPException(503, f"busy: {e}", headers={"Retry-After": "1"}) from None
        depth.set(svc.batcher.depth)
        try:
            out = await asyncio.wait_for(asyncio.wrap_future(fut), settings.request_timeout_s)
        except asyncio.TimeoutError:
            fut.cancel()
            raise HTTPException(504, f"no answer within {settings.request_timeout_s:g} s") from None
        finally:
            depth.set(svc.batcher.depth)
            while svc.batches:  # appended by the batch thread meanwhile: a deque pops safely
                n, seconds = svc.batches.popleft()
                batch_sizes.observe(n)
                batch_seconds.observe(seconds)
        return out

    def per_photo(files, tensors, errors, results, fmt) -> list[dict]:
        it = iter(results)
        out = []
        for f, t, err in zip(files, tensors, errors):
            name = _safe_name(f.filename)
            if t is None:
                photos.labels("rejected").inc()
                out.append({"file_name": name, "error": err})
            else:
                photos.labels("ok").inc()
                out.append({"file_name": name, **fmt(next(it))})
        return out

    @app.post("/v1/predict", summary="Identify the taxa in photos")
    async def predict(files: list[UploadFile] = File(..., description="photos (repeat the field for several)"),
                      rank: str = Form("species", description="kingdom … species"),
                      k: int = Form(5, ge=1, description="candidates per photo"),
                      labels: str = Form("", description="custom labels instead of the vocabulary, comma or newline separated"),
                      subset: str = Form("", description="only these taxa (comma separated values at subset_rank)"),
                      subset_rank: str = Form("species", description="the rank of the subset's values")):
        svc = service_or_503()
        if k > settings.max_k:
            raise HTTPException(422, f"k = {k}: at most {settings.max_k}")
        try:
            names = [x for x in labels.replace("\n", ",").split(",") if x.strip()]
            if names:
                key = await run_in_threadpool(svc.labels_key, names, k)
            elif subset.strip():  # masking the vocabulary may take a moment (once per subset)
                key = await run_in_threadpool(svc.taxa_key, rank, k, subset_rank, subset.split(","))
            else:
                key = svc.taxa_key(rank, k, None, ())
        except (InputError, ValueError) as e:
            raise HTTPException(422, str(e)) from None
        tensors, errors = await decode_all(svc, files)
        results = await run_batched(svc, tensors, key)
        if names:
            def fmt(rows):
                return {"candidates": [{"label": r["classification"], "score": r["score"]} for r in rows]}
        else:
            r = Rank.parse(rank)

            def fmt(rows):
                return {"rank": r.label, "candidates": [_candidate(row, r) for row in rows]}
        # plain JSON types already: FastAPI's encoder would walk every candidate again
        return JSONResponse({"model": svc.model.id, "results": per_photo(files, tensors, errors, results, fmt)})

    @app.post("/v1/embed", summary="Embed photos in the model's image-text space")
    async def embed(files: list[UploadFile] = File(...)):
        svc = service_or_503()
        tensors, errors = await decode_all(svc, files)
        results = await run_batched(svc, tensors, ("embed",))
        return JSONResponse({"model": svc.model.id, "dim": svc.model.embed_dim, "results": per_photo(
            files, tensors, errors, results, lambda v: {"embedding": [float(x) for x in v]})})

    @app.get("/v1/taxa", summary="Find taxa by the start of a scientific or common name")
    async def taxa(q: str = Query(..., min_length=1, max_length=200), limit: int = Query(20, ge=1, le=200)):
        svc = service_or_503()
        return {"query": q, "taxa": await run_in_threadpool(svc.search, q, limit)}

    @app.get("/v1/models", summary="The loaded model and its vocabulary")
    async def models():
        svc = service_or_503()
        m, bank = svc.model, svc.classifier.full_bank
        return {"models": [{"id": m.id, "embed_dim": m.embed_dim, "device": str(m.device),
                            "precision": str(m.dtype).replace("torch.", ""), "image_size": m.preprocess.size,
                            "vocabulary": {"name": bank.name, "taxa": len(bank)},
                            "ranks": [r.label for r in Rank]}]}

    @app.get("/healthz", include_in_schema=False)
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz():
        if state["service"] is None:
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "5"})
        return {"status": "ready", "model": state["service"].model.id}

    @app.get("/metrics", include_in_schema=False)
    async def metrics():
        if state["service"] is not None:
            depth.set(state["service"].batcher.depth)
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    @app.get("/docs", include_in_schema=False)
    async def api_page():
        """Swagger UI from the package's own copy (FastAPI's default loads it from a CDN)."""
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(openapi_url=app.openapi_url, title="taxoclip API",
                                   swagger_js_url="/static/swagger-ui/swagger-ui-bundle.js",
                                   swagger_css_url="/static/swagger-ui/swagger-ui.css",
                                   swagger_favicon_url="/static/swagger-ui/favicon-32x32.png")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is refused with 413, from its
    Content-Length before anything is read, or (chunked) as soon as the count passes the limit."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await self._refuse(scope, send)
        seen, over, refused = 0, False, False

        async def counted():
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise _TooLarge()  # stops the form parser (FastAPI answers it with a 400, replaced below)
            return message

        async def watched(message):
            nonlocal refused
            if not over:
                return await send(message)
            if not refused:
                refused = True
                await self._refuse(scope, send)
        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            if not refused:
                await self._refuse(scope, send)

    async def _refuse(self, scope, send):
        response = JSONResponse({"detail": f"request body over {self.limit:,} bytes"}, status_code=413,
                                headers={"Connection": "close"})
        await response(scope, None, send)


class Guard:
    """ASGI middleware: the API key on /v1/ routes (constant-time comparison) and request metrics.
    (Plain ASGI: Starlette's `BaseHTTPMiddleware` costs a stream and a task group per request.)"""

    def __init__(self, app, api_key: str | None, requests, latency):
        self.app, self.api_key, self.requests, self.latency = app, api_key, requests, latency

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        route, start, status = _route(path), time.perf_counter(), 500
        if path.startswith("/v1/") and self.api_key is not None:
            headers = dict(scope["headers"])
            given = headers.get(b"x-api-key") or headers.get(b"authorization", b"").removeprefix(b"Bearer ")
            if not hmac.compare_digest(given, self.api_key.encode()):
                self.requests.labels(route, "401").inc()
                return await JSONResponse({"detail": "missing or wrong API key"}, status_code=401)(scope, receive, send)

        async def observed(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, observed)
        finally:
            if path.startswith("/v1/") or route != "other":
                self.requests.labels(route, str(status)).inc()
                self.latency.labels(route).observe(time.perf_counter() - start)


def _safe_name(name: str | None) -> str:
    """A client's file name as a label only: its last path part, printable, at most 200 characters."""
    base = (name or "upload").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip() or "upload"
    return base[:200]


def _candidate(row: dict, rank: Rank) -> dict:
    ranks = [r.label for r in Rank][: int(rank) + 1]
    lineage = {r: row.get(r if r != "species" else "species_epithet", "") for r in ranks}
    if rank is Rank.SPECIES:
        name = row.get("species", "")
    else:
        name = row.get(rank.label, "")
    return {"name": name, "common_name": row.get("common_name", ""), "score": row["score"], "lineage": lineage}


def _version() -> str:
    from .. import __version__

    return __version__

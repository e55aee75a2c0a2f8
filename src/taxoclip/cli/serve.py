"""`taxoclip serve`: the HTTP API and web page on this machine (127.0.0.1 unless --host says otherwise)."""
from __future__ import annotations

import argparse

from ._options import add_decode_memory_option, positive_int


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="run the identification service (HTTP API and a web page to drop photos on)",
        description="Serve the model over HTTP: POST /v1/predict, /v1/embed; GET /v1/taxa, /v1/models, "
                    "/healthz, /readyz, /metrics; the page at / and the API document at /docs. Listens on "
                    "127.0.0.1 unless --host says otherwise.")
    p.add_argument("--model", default="taxoclip-mini", help="model id (default: the bundled taxoclip-mini)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default auto)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--max-batch", type=positive_int, default=64, help="photos per model batch (default 64)")
    p.add_argument("--max-wait-ms", type=float, default=25.0,
                   help="how long a batch waits for more photos (default 25 ms: under load, batches of 16 "
                        "one-photo requests instead of 8)")
    p.add_argument("--max-queue", type=positive_int, default=512,
                   help="photos waiting before requests get 503 + Retry-After (default 512)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a request may take (default 60)")
    p.add_argument("--max-upload-mb", type=float, default=32.0, help="largest photo accepted (default 32 MB)")
    p.add_argument("--max-megapixels", type=float, default=50.0, help="largest photo accepted (default 50 MP)")
    add_decode_memory_option(p, "a photo that needs more is refused (413)")
    p.add_argument("--api-key", help="require this key (X-API-Key header or Bearer token); "
                                     "or set TAXOCLIP_API_KEY")
    p.add_argument("--cors-origin", action="append", default=[],
                   help="allow browser pages from this origin to call the API (repeatable; default none)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ..warmup import prepare_bundled

    prepare_bundled(args.model, device=args.device, precision=args.precision)  # before torch is imported here
    from ..serve import ServeSettings, UploadLimits, create_app

    limits = UploadLimits(max_bytes=int(args.max_upload_mb * 2**20), max_pixels=int(args.max_megapixels * 1e6),
                          max_decode_memory=args.max_decode_memory)
    settings = ServeSettings(model=args.model, device=args.device, precision=args.precision, max_batch=args.max_batch,
                             max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, request_timeout_s=args.timeout,
                             api_key=args.api_key, cors_origins=args.cors_origin, limits=limits)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info", access_log=False)
    return 0

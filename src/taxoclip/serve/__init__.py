"""The identification service: an HTTP API with request batching and a web page.

    taxoclip serve                      # http://127.0.0.1:8000/ (the page), /docs (the API)

    >>> from taxoclip.serve import ServeSettings, create_app
    >>> app = create_app(ServeSettings(model="taxoclip-mini", max_batch=64))
"""
from .app import ServeSettings, create_app
from .uploads import UploadLimits

__all__ = ["ServeSettings", "UploadLimits", "create_app"]

"""kNN search web service: JSON API + one static page, on the stdlib HTTP server.

    GET  /health                      {"status": "ok", "index": ..., "ntotal": ...}
    GET  /search?q=TEXT&k=10&safe=1&lang=en&dedup=1
    POST /search  body: image bytes (Content-Type image/*), or JSON
                  {"text": ..., "image_b64": ..., "vector": [...], "k": .., "safe": .., "lang": ..}
    GET  /image/<sample_id>           image bytes from the images table (never taken-down ones)
    GET  /                            the search page (static/index.html)

Why stdlib: the service is a thin shell over `Searcher`; ThreadingHTTPServer handles the
few concurrent users of a dataset browser without adding a dependency. Put a real
reverse proxy in front for public exposure. Request bodies are bounded by
serve.max_upload_mb; k by serve.max_k.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from laion_spark.config import Config

log = logging.getLogger(__name__)
_SID = re.compile(r"^[0-9a-f]{32}$")
_IMAGE_TYPES = {"jpeg": "image/jpeg", "jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


def _truthy(v: str | None, default: bool) -> bool:
    if v is None or v == "":
        return default
    return v.lower() in ("1", "true", "yes", "on")


def _page() -> bytes:
    return resources.files("laion_spark.serve").joinpath("static/index.html").read_bytes()


def make_handler(searcher, cfg: Config):
    serve = cfg.serve
    page = _page()

    class Handler(BaseHTTPRequestHandler):
        server_version = "laion-spark-search/1"

        def log_message(self, fmt, *args):  # quiet by default; errors still go to the JSON
            pass

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, obj) -> None:
            self._send(code, json.dumps(obj).encode(), "application/json")

        def do_GET(self):  # noqa: N802 (http.server naming)
            parts = urlsplit(self.path)
            qs = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            if parts.path in ("/", "/index.html"):
                return self._send(200, page, "text/html; charset=utf-8")
            if parts.path == "/health":
                return self._json(
                    200, {"status": "ok", **searcher.info(), "safe_mode": serve.safe_mode}
                )
            if parts.path == "/search":
                q = qs.get("q", "").strip()
                if not q:
                    return self._json(400, {"error": "missing q"})
                if len(q) > 1000:
                    return self._json(400, {"error": "q longer than 1000 characters"})
                return self._do_search(q, qs)
            if parts.path.startswith("/image/"):
                sid = parts.path[len("/image/") :]
                if not _SID.match(sid):
                    return self._json(400, {"error": "bad sample_id"})
                got = searcher.image(sid)
                if got is None:
                    return self._json(404, {"error": "no image"})
                data, fmt = got
                return self._send(
                    200, data, _IMAGE_TYPES.get(fmt.lower(), "application/octet-stream")
                )
            return self._json(404, {"error": "not found"})

        def do_POST(self):  # noqa: N802
            parts = urlsplit(self.path)
            if parts.path != "/search":
                return self._json(404, {"error": "not found"})
            qs = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                return self._json(400, {"error": "bad Content-Length"})
            if length <= 0:
                return self._json(400, {"error": "empty body"})
            if length > serve.max_upload_mb * 2**20:
                return self._json(413, {"error": f"body over {serve.max_upload_mb} MB"})
            body = self.rfile.read(length)
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if ctype.startswith("image/") or ctype == "application/octet-stream":
                return self._do_search(body, qs)
            try:
                req = json.loads(body)
            except ValueError:
                return self._json(400, {"error": "body must be JSON or an image"})
            if not isinstance(req, dict):
                return self._json(400, {"error": "JSON body must be an object"})
            for key in ("k", "safe", "lang", "dedup"):
                if key in req:
                    qs[key] = str(req[key])
            if req.get("vector") is not None:
                import numpy as np

                query = np.asarray(req["vector"], dtype="float32")
            elif req.get("image_b64"):
                try:
                    query = base64.b64decode(req["image_b64"], validate=True)
                except ValueError:
                    return self._json(400, {"error": "image_b64 is not base64"})
            elif req.get("text"):
                query = str(req["text"])[:1000]
            else:
                return self._json(400, {"error": "give text, image_b64 or vector"})
            return self._do_search(query, qs)

        def _do_search(self, query, qs: dict) -> None:
            try:
                k = int(qs.get("k", 10))
            except ValueError:
                return self._json(400, {"error": "k must be an integer"})
            if not 1 <= k <= serve.max_k:
                return self._json(400, {"error": f"k must be in 1..{serve.max_k}"})
            try:
                results = searcher.search(
                    query,
                    k=k,
                    safe_mode=_truthy(qs.get("safe"), serve.safe_mode),
                    language=qs.get("lang") or None,
                    dedup=_truthy(qs.get("dedup"), True),
                )
            except (ValueError, TypeError) as e:
                return self._json(400, {"error": str(e)})
            except Exception as e:  # a broken query must not take the service down
                return self._json(500, {"error": f"{type(e).__name__}: {e}"})
            return self._json(200, {"results": results, "k": k})

    return Handler


def make_server(
    searcher, cfg: Config, host: str | None = None, port: int | None = None
) -> ThreadingHTTPServer:
    """A bound (not yet serving) server; port 0 picks a free port (see .server_address)."""
    host = host or cfg.serve.host
    port = cfg.serve.port if port is None else port
    server = ThreadingHTTPServer((host, port), make_handler(searcher, cfg))
    server.daemon_threads = True
    return server


def start_background(searcher, cfg: Config, host: str = "127.0.0.1", port: int = 0):
    """(server, thread): serving in a daemon thread; stop with server.shutdown()."""
    server = make_server(searcher, cfg, host, port)
    t = threading.Thread(target=server.serve_forever, name="laion-spark-serve", daemon=True)
    t.start()
    return server, t


def serve(cfg: Config, host: str | None = None, port: int | None = None, spark=None) -> None:
    """Load the merged index of cfg.serve.index and serve it until interrupted."""
    from laion_spark.index.search import Searcher

    searcher = Searcher.open(spark, cfg)
    server = make_server(searcher, cfg, host, port)
    h, p = server.server_address[:2]
    log.info(
        "serving index %r (%d vectors) on http://%s:%s/",
        searcher.info()["index_name"],
        searcher.ntotal,
        h,
        p,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()

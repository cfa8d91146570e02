"""kNN search web service: JSON API + one static page, on FastAPI + uvicorn.

    GET  /health                      {"status": "ok", "index": ..., "ntotal": ..., ...}
    GET  /search?q=TEXT&k=20&safe=true&lang=en&dedup=true&page=0&qlang=de
    POST /search  body: image bytes (Content-Type image/* or application/octet-stream, the
                  other parameters in the query string), or JSON
                  {"text" | "image_b64" | "vector", "k", "safe", "lang", "dedup", "page", "qlang"}
    POST /subsets JSON {"name", "text" | "image_b64" | "vector", "mode": "top" | "threshold",
                  "top_n", "min_score", "safe", "lang"} -> a subset named
                  <serve.subset_prefix><name> in the `subsets` table
    GET  /image/<sample_id>           image bytes from the images table (never taken-down ones)
    GET  /report/...                  the latest report (<workdir>/report/), read-only
    GET  /                            the search page (static/index.html + app.js + app.css)

    app = create_app(searcher, cfg)            # a FastAPI app; state on app.state
    server = start_background(app, cfg)        # uvicorn in a thread (tests); server.url
    serve(cfg)                                 # `laion-spark serve`

Every request is a pydantic model (serve/models.py): a wrong type, an unknown boolean,
a malformed or deeply nested JSON body is a 422 JSON answer. Every error is JSON
({"error", "status"}), wrong methods included (405). Hostile clients are bounded
(serve/limits.py): Host allowlist, body size and time limits, header timeout, CSP; image
queries are decoded reduced under a pixel cap with at most serve.max_concurrent_decodes at
once (serve/images.py). CPU work (decoding, CLIP, faiss) runs in the thread pool so the
event loop keeps accepting and timing out connections. The model is warmed at startup.
A watcher thread (serve/watch.py) applies new takedowns within about a second and swaps
in a new merged index when one appears.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations, which
# use names local to create_app (the config's bounds)
import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from importlib import resources
from typing import Annotated

from laion_spark.config import Config
from laion_spark.serve.images import ImageRejected, decode_query_image
from laion_spark.serve.limits import (
    BodyLimits,
    BodyTimeout,
    BodyTooLarge,
    HeaderLimit,
    HostAllowlist,
    SecurityHeaders,
    allowed_hosts,
    guarded_protocol,
)
from laion_spark.serve.models import (
    LANG_PATTERN,
    SAMPLE_ID_PATTERN,
    Flag,
    request_models,
)

log = logging.getLogger(__name__)
_IMAGE_TYPES = {"jpeg": "image/jpeg", "jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
_STATIC = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
_REPORT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
}
SubsetWriter = Callable[[str, list[str]], int]


def report_dir(cfg: Config) -> str:
    """Where the report stage writes its pages; the service serves them at /report/."""
    return os.path.join(cfg.workdir_path, "report")


def report_link(cfg: Config) -> str | None:
    """ "/report/" when <workdir>/report/index.html exists (local workdirs), else None."""
    if "://" in cfg.workdir_path:
        return None
    return "/report/" if os.path.isfile(os.path.join(report_dir(cfg), "index.html")) else None


def _static(name: str) -> bytes:
    return resources.files("laion_spark.serve").joinpath(f"static/{name}").read_bytes()


def create_app(
    searcher,
    cfg: Config,
    subset_writer: SubsetWriter | None = None,
    watch: bool = True,
    warm: bool = True,
    spark=None,
):
    """The FastAPI app serving `searcher` (state: app.state.searcher, .cfg, .watcher)."""
    from laion_spark.extras import require

    require("serve", "fastapi", "uvicorn")
    from fastapi import FastAPI, Path, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from pydantic import ValidationError
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    serve = cfg.serve
    SearchBody, SubsetBody = request_models(serve)
    decodes = asyncio.Semaphore(serve.max_concurrent_decodes)
    pages = {name: _static(name) for name in ("index.html", *_STATIC)}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if warm:
            t = time.time()
            await run_in_threadpool(app.state.searcher.warm)
            log.info("model warmed in %.1f s", time.time() - t)
        if watch:
            from laion_spark.serve.watch import Watcher

            app.state.watcher = Watcher(
                lambda: app.state.searcher,
                lambda s: setattr(app.state, "searcher", s),
                serve.takedown_poll_seconds,
                spark,
            ).start()
        try:
            yield
        finally:
            if app.state.watcher is not None:
                app.state.watcher.stop()

    app = FastAPI(
        title="laion_spark search",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=lifespan,
    )
    app.state.searcher = searcher
    app.state.cfg = cfg
    app.state.subset_writer = subset_writer if serve.allow_subsets else None
    app.state.watcher = None

    # ------------------------------------------------------------------ errors as JSON
    def error(status: int, message: str, **extra) -> JSONResponse:
        return JSONResponse({"error": message, "status": status, **extra}, status_code=status)

    async def _invalid(request, exc):
        # no `input` echo (it may be megabytes) and nothing that is not plain JSON
        detail = [
            {"loc": [str(x) for x in e.get("loc", ())], "msg": e.get("msg"), "type": e.get("type")}
            for e in exc.errors()
        ]
        return error(422, "invalid request", detail=detail)

    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(ValidationError, _invalid)  # bodies parsed by the models

    @app.exception_handler(HTTPException)
    async def _http(request, exc):
        msg = {404: "not found", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
        resp = error(exc.status_code, msg)
        for k, v in (exc.headers or {}).items():
            resp.headers[k] = v
        return resp

    @app.exception_handler(ImageRejected)
    async def _image(request, exc):
        return error(exc.status, str(exc))

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request, exc):
        resp = error(413, f"body larger than {serve.max_upload_mb} MB")
        resp.headers["connection"] = "close"
        return resp

    @app.exception_handler(BodyTimeout)
    async def _slow_body(request, exc):
        resp = error(408, f"body not received within {serve.body_timeout_s:g} s")
        resp.headers["connection"] = "close"
        return resp

    @app.exception_handler(Exception)
    async def _crash(request, exc):  # a broken query must not take the service down
        log.exception("unhandled error on %s", request.url.path)
        return error(500, f"internal error: {type(exc).__name__}")

    def invalid(loc: str, msg: str) -> JSONResponse:
        return error(
            422, "invalid request", detail=[{"loc": [loc], "msg": msg, "type": "value_error"}]
        )

    def repeated(request: Request) -> str | None:
        keys = [k for k, _ in request.query_params.multi_items()]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        return dup[0] if dup else None

    # ------------------------------------------------------------------ queries
    async def run_search(query, k: int, safe: bool, lang, dedup: bool, page: int, qlang=None):
        if (page + 1) * k > serve.max_page_results:
            return invalid("page", f"(page + 1) * k may not exceed {serve.max_page_results}")
        s = app.state.searcher
        if isinstance(query, bytes):
            async with decodes:
                query = await run_in_threadpool(decode_query_image, query, serve)
        try:
            results = await run_in_threadpool(
                lambda: s.search(query, k, safe, lang, dedup, query_language=qlang, offset=page * k)
            )
        except (ValueError, TypeError) as e:
            return error(422, str(e))
        return {
            "results": results,
            "k": k,
            "page": page,
            "safe": safe,
            "has_more": len(results) == k and (page + 2) * k <= serve.max_page_results,
        }

    @app.get("/search")
    async def search_get(
        request: Request,
        q: Annotated[str, Query(min_length=1, max_length=1000)],
        k: Annotated[int, Query(ge=1, le=serve.max_k)] = 20,
        safe: Annotated[Flag, Query()] = serve.safe_mode,
        lang: Annotated[str | None, Query(pattern=LANG_PATTERN)] = None,
        dedup: Annotated[Flag, Query()] = True,
        page: Annotated[int, Query(ge=0, le=serve.max_page_results)] = 0,
        qlang: Annotated[str | None, Query(pattern=LANG_PATTERN)] = None,
    ):
        if dup := repeated(request):
            return invalid(dup, "given more than once")
        if not q.strip():
            return invalid("q", "empty query")
        return await run_search(q.strip(), k, safe, lang, dedup, page, qlang)

    @app.post("/search")
    async def search_post(
        request: Request,
        k: Annotated[int, Query(ge=1, le=serve.max_k)] = 20,
        safe: Annotated[Flag, Query()] = serve.safe_mode,
        lang: Annotated[str | None, Query(pattern=LANG_PATTERN)] = None,
        dedup: Annotated[Flag, Query()] = True,
        page: Annotated[int, Query(ge=0, le=serve.max_page_results)] = 0,
    ):
        if dup := repeated(request):
            return invalid(dup, "given more than once")
        ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        body = await request.body()
        if not body:
            return error(400, "empty body")
        if ctype.startswith("image/") or ctype == "application/octet-stream":
            return await run_search(body, k, safe, lang, dedup, page)
        if ctype != "application/json":
            return error(415, "send an image (image/*) or JSON (application/json)")
        req = SearchBody.model_validate_json(body)  # ValidationError -> 422 (handler below)
        try:
            query = _query_of(req)
        except ValueError as e:
            return invalid("image_b64", str(e))
        return await run_search(query, req.k, req.safe, req.lang, req.dedup, req.page, req.qlang)

    @app.post("/subsets")
    async def make_subset(request: Request):
        """A named subset from a query: the top N results, or all above a score."""
        writer = app.state.subset_writer
        if writer is None:
            return error(503, "subset generation is off (serve.allow_subsets, or no Spark)")
        ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return error(415, "send JSON (application/json)")
        req = SubsetBody.model_validate_json(await request.body())
        try:
            query = _query_of(req)
        except ValueError as e:
            return invalid("image_b64", str(e))
        if isinstance(query, bytes):
            async with decodes:
                query = await run_in_threadpool(decode_query_image, query, serve)
        s = app.state.searcher
        limit = min(serve.max_subset_rows, max(s.ntotal, 1))
        n = req.top_n if req.mode == "top" else limit
        try:
            hits = await run_in_threadpool(
                lambda: s.search(
                    query, n, req.safe, req.lang, False, query_language=req.qlang, limit=limit
                )
            )
        except (ValueError, TypeError) as e:
            return error(422, str(e))
        if req.mode == "threshold":
            hits = [h for h in hits if h["score"] >= req.min_score]
        name = (
            req.name if req.name.startswith(serve.subset_prefix) else serve.subset_prefix + req.name
        )
        ids = [h["sample_id"] for h in hits]
        rows = await run_in_threadpool(writer, name, ids)
        return {
            "subset": name,
            "rows": int(rows),
            "mode": req.mode,
            "min_score": min((h["score"] for h in hits), default=None),
        }

    # ------------------------------------------------------------------ pages and data
    @app.get("/health")
    async def health():
        s = app.state.searcher
        return {
            "status": "ok",
            **s.info(),
            "safe_mode": serve.safe_mode,
            "nsfw_scores": s.has_nsfw_scores,
            "languages": s.languages(),
            "max_k": serve.max_k,
            "subsets": app.state.subset_writer is not None,
            "subset_prefix": serve.subset_prefix,
            "report": report_link(cfg),
            "takedowns_version": s.takedowns_seen,
        }

    @app.get("/image/{sample_id}")
    async def image(sample_id: Annotated[str, Path(pattern=SAMPLE_ID_PATTERN)]):
        got = await run_in_threadpool(app.state.searcher.image, sample_id)
        if got is None:
            return error(404, "no image")
        data, fmt = got
        return Response(
            data,
            media_type=_IMAGE_TYPES.get(fmt.lower(), "application/octet-stream"),
            headers={"cache-control": "private, max-age=300"},
        )

    @app.get("/")
    async def page():
        return Response(pages["index.html"], media_type="text/html; charset=utf-8")

    @app.get("/static/{name}")
    async def static(name: str):
        if name not in _STATIC:
            return error(404, "not found")
        return Response(pages[name], media_type=_STATIC[name])

    @app.get("/report/{path:path}")
    async def report(path: str):
        found = _report_file(cfg, path or "index.html")
        if found is None:
            return error(404, "no report")
        with open(found, "rb") as f:
            data = f.read()
        ext = os.path.splitext(found)[1].lower()
        return Response(data, media_type=_REPORT_TYPES[ext])

    # outermost last: security headers wrap every answer, errors of the others included
    app.add_middleware(
        BodyLimits, max_bytes=serve.max_upload_mb * 2**20, timeout_s=serve.body_timeout_s
    )
    app.add_middleware(HostAllowlist, hosts=allowed_hosts(serve.allowed_hosts, serve.host))
    app.add_middleware(HeaderLimit, max_bytes=16 * 1024)
    app.add_middleware(SecurityHeaders)
    return app


def _query_of(req):
    """The query of a validated body: text, decoded image bytes or a numpy vector."""
    import numpy as np

    if req.text is not None:
        return req.text
    if req.image_b64 is not None:
        return req.image_bytes()
    return np.asarray(req.vector, dtype="float32")


def _report_file(cfg: Config, rel: str) -> str | None:
    """A regular file inside <workdir>/report with a known type; never outside it."""
    root = os.path.realpath(report_dir(cfg))
    if not os.path.isdir(root):
        return None
    target = os.path.realpath(os.path.join(root, rel))
    if os.path.isdir(target):
        target = os.path.join(target, "index.html")
    if os.path.commonpath([root, target]) != root or not os.path.isfile(target):
        return None
    if os.path.splitext(target)[1].lower() not in _REPORT_TYPES:
        return None
    return target


def uvicorn_config(app, cfg: Config, host: str | None = None, port: int | None = None):
    import uvicorn

    serve = cfg.serve
    return uvicorn.Config(
        app,
        host=host or serve.host,
        port=serve.port if port is None else port,
        http=guarded_protocol(serve.header_timeout_s),
        ws="none",
        lifespan="on",
        timeout_keep_alive=serve.keepalive_timeout_s,
        limit_concurrency=serve.max_connections,
        h11_max_incomplete_event_size=16 * 1024,  # request line + headers
        server_header=False,
        access_log=False,
        log_level="warning",
    )


class BackgroundServer:
    """uvicorn serving an app in a daemon thread (tests, notebooks); .url, .stop()."""

    def __init__(self, app, cfg: Config, host: str = "127.0.0.1", port: int = 0):
        import socket

        import uvicorn

        self.app = app
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        self.sock = sock
        self.host, self.port = sock.getsockname()[:2]
        self.server = uvicorn.Server(uvicorn_config(app, cfg, host, self.port))
        self.thread = threading.Thread(
            target=self.server.run,
            kwargs={"sockets": [sock]},
            name="laion-spark-serve",
            daemon=True,
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 120) -> "BackgroundServer":
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if not self.thread.is_alive() or time.time() - t0 > timeout:
                raise RuntimeError("the search service did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def start_background(app_or_searcher, cfg: Config, host: str = "127.0.0.1", port: int = 0, **kw):
    """Serve in a daemon thread: a FastAPI app, or a Searcher (wrapped by create_app)."""
    app = app_or_searcher
    if not hasattr(app_or_searcher, "router"):
        app = create_app(app_or_searcher, cfg, **kw)
    return BackgroundServer(app, cfg, host, port).start()


def spark_subset_writer(cfg: Config, spark=None) -> SubsetWriter:
    """Writes subsets through Tables (curate's writer); Spark starts on the first use, so
    a service that never makes a subset never starts a JVM."""
    lock = threading.Lock()
    state: dict = {}

    def write(name: str, sample_ids: list[str]) -> int:
        from laion_spark.curate.subsets import write_subset
        from laion_spark.tables import Tables

        with lock:
            if "tables" not in state:
                from laion_spark.session import get_spark

                session = spark or get_spark(cfg)
                state["tables"] = Tables(session, cfg)
            tables = state["tables"]
            rows = [(s, 1) for s in dict.fromkeys(sample_ids)]
            df = tables.spark.createDataFrame(rows, "sample_id string, repeat int")
            return write_subset(tables, name, df)

    return write


def serve(cfg: Config, host: str | None = None, port: int | None = None, spark=None) -> None:
    """Load the merged index of cfg.serve.index and serve it until interrupted."""
    import uvicorn

    from laion_spark.extras import require
    from laion_spark.index.search import Searcher

    require("serve", "fastapi", "uvicorn")
    searcher = Searcher.open(spark, cfg)
    writer = spark_subset_writer(cfg, spark) if cfg.serve.allow_subsets else None
    app = create_app(searcher, cfg, subset_writer=writer, spark=spark)
    config = uvicorn_config(app, cfg, host, port)
    log.info(
        "serving index %r (%d vectors) on http://%s:%s/",
        searcher.info()["index_name"],
        searcher.ntotal,
        config.host,
        config.port,
    )
    uvicorn.Server(config).run()

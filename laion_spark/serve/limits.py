"""What keeps the service up against hostile clients: plain ASGI middlewares and uvicorn's
HTTP protocol with a header timeout.

- `HostAllowlist`: a request whose Host header is not allowed gets a 400 (DNS rebinding: a
  page on evil.example resolving to 127.0.0.1 must not reach this API).
- `HeaderLimit`: request line + headers over 16 kB get a 431.
- `BodyLimits`: bodies over the size limit get a 413 (from Content-Length before reading,
  or while streaming a chunked body); a body that has not fully arrived within
  body_timeout_s gets a 408 and the connection is closed.
- `SecurityHeaders`: CSP and the usual headers on every response (also errors).
- `GuardedH11Protocol`: uvicorn's h11 protocol, plus a header timeout (a client that
  opens a connection and sends half a request line is dropped after header_timeout_s, also
  between keep-alive requests) and JSON bodies for the protocol-level 400s.
Every error is JSON: {"error": ..., "status": ...}. They are pure ASGI (no
BaseHTTPMiddleware), so they cost little per request and never buffer a body.
"""

from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
# generated reports (read-only under /report/): their own inline styles, never scripts
REPORT_CSP = (
    "default-src 'none'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "font-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_COMMON_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), interest-cohort=()"),
]


def json_error(status: int, message: str, extra: dict | None = None) -> bytes:
    return json.dumps({"error": message, "status": status, **(extra or {})}).encode()


async def send_json(send, status: int, message: str, close: bool = False) -> None:
    body = json_error(status, message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def allowed_hosts(hosts: list[str], bind_host: str) -> set[str]:
    """The Host names accepted: the configured list, else loopback names + the bind host."""
    out = {h.lower().strip("[]") for h in hosts}
    if not out:
        out = {"localhost", "127.0.0.1", "::1"}
        if bind_host not in ("0.0.0.0", "::", ""):
            out.add(bind_host.lower().strip("[]"))
    return out


def host_name(header: str) -> str:
    """Host header -> host name (port and IPv6 brackets removed)."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1 : h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


class HostAllowlist:
    def __init__(self, app, hosts: set[str]):
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or "*" in self.hosts:
            return await self.app(scope, receive, send)
        host = ""
        for k, v in scope["headers"]:
            if k == b"host":
                host = v.decode("latin-1")
                break
        if host_name(host) not in self.hosts:
            return await send_json(send, 400, "Host header not allowed", close=True)
        return await self.app(scope, receive, send)


class HeaderLimit:
    """Request line + headers over `max_bytes` get a 431 (h11 only bounds headers that
    arrive in pieces; a single large packet is parsed whole)."""

    def __init__(self, app, max_bytes: int = 16 * 1024):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
            size += sum(len(k) + len(v) + 4 for k, v in scope["headers"])
            if size > self.max_bytes:
                return await send_json(
                    send, 431, f"request line and headers over {self.max_bytes} bytes", close=True
                )
        return await self.app(scope, receive, send)


class BodyTooLarge(Exception):
    pass


class BodyTimeout(Exception):
    pass


class BodyLimits:
    """Size and time limits on request bodies, enforced in `receive`."""

    def __init__(self, app, max_bytes: int, timeout_s: float):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope["headers"]:
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    return await send_json(send, 400, "bad Content-Length", close=True)
                if n > self.max_bytes:
                    return await send_json(
                        send, 413, f"body larger than {self.max_bytes} bytes", close=True
                    )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            left = deadline - loop.time()
            if left <= 0:
                raise BodyTimeout()
            try:
                msg = await asyncio.wait_for(receive(), left)
            except (TimeoutError, asyncio.TimeoutError):  # noqa: UP041 (distinct before 3.11)
                raise BodyTimeout() from None
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge()
            return msg

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await send_json(send, 413, f"body larger than {self.max_bytes} bytes", close=True)
        except BodyTimeout:
            if not started:
                await send_json(
                    send, 408, f"body not received within {self.timeout_s:g} s", close=True
                )


class SecurityHeaders:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        report = scope.get("path", "").startswith("/report/")
        csp = (REPORT_CSP if report else PAGE_CSP).encode()

        async def with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in _COMMON_HEADERS if k not in names]
                if b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", csp))
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        return await self.app(scope, receive, with_headers)


def guarded_protocol(header_timeout_s: float):
    """A uvicorn h11 protocol class with this header timeout."""

    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()  # the request line and headers are complete

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request's headers get the same deadline

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            self._send_json_and_close(408, "request headers not received in time")

        def send_400_response(self, msg: str) -> None:  # protocol errors as JSON too
            self._send_json_and_close(400, msg)

        def _send_json_and_close(self, status: int, msg: str) -> None:
            # written raw: h11 has no request to answer yet (or is in its error state)
            body = json_error(status, msg)
            reason = {400: b"Bad Request", 408: b"Request Timeout"}.get(status, b"Error")
            head = b"HTTP/1.1 %d %s\r\n" % (status, reason)
            head += b"content-type: application/json\r\nconnection: close\r\n"
            head += b"content-length: %d\r\n\r\n" % len(body)
            self.transport.write(head + body)
            self.transport.close()

    return GuardedH11Protocol

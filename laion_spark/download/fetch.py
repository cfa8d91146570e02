"""HTTP(S) fetch of one image URL, bounded in time and bytes, safe by default.

Built on http.client directly (not urllib/requests) because it lets us (1) connect to the
address the SSRF guard checked rather than resolving the name again, (2) keep one
keep-alive connection per host per thread (no TCP handshake per image), and (3) stop
reading the moment a body passes `max_bytes`. Redirects are followed by hand so every hop
gets the SSRF check and the redirect cap.

The total deadline `timeout_s` is held by the sockets themselves (_DeadlineSocket): every
connect, TLS handshake, send and receive waits at most min(its own timeout, time left), so
a server that hangs or trickles one byte at a time (headers, chunk sizes, body) is cut at
the deadline, not up to a read timeout later. A gzip/deflate `Content-Encoding` the server
sent although we ask for none is undone within `max_bytes`.
"""

from __future__ import annotations

import email.utils
import http.client
import math
import socket
import ssl
import threading
import time
import urllib.robotparser
import zlib
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from laion_spark.download.settings import DownloadSettings
from laion_spark.download.ssrf import check_host, parse_networks

REDIRECT_CODES = {301, 302, 303, 307, 308}
RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}
_CHUNK = 64 * 1024
_DNS_TTL_S = 300.0


def user_agent(token: str) -> str:
    """img2dataset's convention: a browser-compatible prefix, then OUR token and a URL.

    Never another crawler's token (no Googlebot/bingbot), so sites can opt us out by name.
    """
    return f"Mozilla/5.0 (compatible; {token}; +https://github.com/laion_spark)"


def is_opted_out(header_values: list[str], token: str, directives: list[str]) -> bool:
    """X-Robots-Tag says no: `noai`, or `<our token>: noai` (img2dataset's rule).

    A directive addressed to another agent (`googlebot: noindex`) does not apply to us.
    """
    wanted = {d.lower() for d in directives}
    tok = token.lower()
    for value in header_values:
        parts = value.split(":", 1)
        agent = parts[0].strip().lower() if len(parts) == 2 else None
        found = {d.strip().lower() for d in parts[-1].split(",")}
        if agent in (None, tok, "*") and found & wanted:
            return True
    return False


@dataclass
class FetchResult:
    status: str  # success or a failure status (see docs/download.md)
    body: bytes | None = None
    http_status: int | None = None
    error: str | None = None
    content_type: str | None = None
    final_url: str | None = None
    attempts: int = 0
    seconds: float = 0.0


class _Fail(Exception):
    """A terminal or retryable failure inside one attempt."""

    def __init__(
        self,
        status: str,
        error: str,
        http_status: int | None = None,
        retry_after: float | None = None,
        retryable: bool = False,
    ):
        super().__init__(error)
        self.status, self.error, self.http_status = status, error, http_status
        self.retry_after, self.retryable = retry_after, retryable


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class DeadlinePassed(TimeoutError):
    """The sample's total deadline (`timeout_s`) passed while waiting on the network."""


class _Deadline:
    """What every blocking socket call of one connection waits for: the current request's
    absolute deadline (time.monotonic) and the per-operation read timeout."""

    deadline: float = math.inf
    read_timeout: float = 5.0

    def _arm(self, per_call: float | None = None) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlinePassed("total deadline passed")
        self.settimeout(min(per_call or self.read_timeout, left))  # type: ignore[attr-defined]

    # http.client reads through makefile() -> recv_into; the defaults differ between plain
    # and TLS sockets, so the arguments pass through as given
    def recv_into(self, *args):
        self._arm()
        return super().recv_into(*args)  # type: ignore[misc]

    def recv(self, *args):
        self._arm()
        return super().recv(*args)  # type: ignore[misc]

    def sendall(self, *args):
        self._arm()
        return super().sendall(*args)  # type: ignore[misc]


class _DeadlineSocket(_Deadline, socket.socket):
    pass


class _DeadlineSSLSocket(_Deadline, ssl.SSLSocket):
    pass


def _deadline_connect(
    address: tuple[str, int], deadline: float, connect_timeout: float, read_timeout: float
) -> _DeadlineSocket:
    """A TCP connection to an IP literal, its connect bounded by the deadline too."""
    ip, port = address
    sock = _DeadlineSocket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
    sock.deadline, sock.read_timeout = deadline, read_timeout
    try:
        sock._arm(connect_timeout)
        sock.connect((ip, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to an already-checked IP, with SNI and certificate check for the host name."""

    def __init__(
        self,
        ip: str,
        port: int,
        server_name: str,
        connect_timeout: float,
        read_timeout: float,
        context: ssl.SSLContext,
    ):
        super().__init__(ip, port, timeout=connect_timeout, context=context)
        self._server_name, self._read_timeout, self._ctx = server_name, read_timeout, context
        self.deadline = math.inf

    def connect(self) -> None:
        sock = _deadline_connect(
            (self.host, self.port), self.deadline, self.timeout, self._read_timeout
        )
        sock._arm()  # the handshake as a whole is bounded by this timeout (ssl module)
        ssock = self._ctx.wrap_socket(sock, server_hostname=self._server_name)
        ssock.deadline, ssock.read_timeout = self.deadline, self._read_timeout
        self.sock = ssock


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, ip: str, port: int, connect_timeout: float, read_timeout: float):
        super().__init__(ip, port, timeout=connect_timeout)
        self._read_timeout = read_timeout
        self.deadline = math.inf

    def connect(self) -> None:
        self.sock = _deadline_connect(
            (self.host, self.port), self.deadline, self.timeout, self._read_timeout
        )


def _set_deadline(conn: http.client.HTTPConnection, deadline: float) -> None:
    """The deadline of the request about to run on `conn` (new or kept-alive socket)."""
    conn.deadline = deadline  # type: ignore[attr-defined]
    if conn.sock is not None:
        conn.sock.deadline = deadline


def _inflate(body: bytes, encoding: str, max_bytes: int, http_status: int) -> bytes:
    """The body with its Content-Encoding undone (gzip, x-gzip, deflate; several in the
    order applied), never more than max_bytes of output; _Fail for anything else."""
    for coding in reversed([c.strip().lower() for c in encoding.split(",") if c.strip()]):
        if coding == "identity":
            continue
        if coding in ("gzip", "x-gzip"):
            if not body.startswith(b"\x1f\x8b"):
                continue  # labelled gzip but sent plain (a common server slip): keep it
            wbits = 16 + zlib.MAX_WBITS
        elif coding == "deflate":
            # RFC 9110 deflate is zlib-wrapped; some servers send raw deflate
            wbits = zlib.MAX_WBITS if body[:1] == b"\x78" else -zlib.MAX_WBITS
        else:
            raise _Fail(
                "failed_to_decode",
                f"Content-Encoding {coding!r} is not supported (gzip and deflate are; we send "
                "no Accept-Encoding, the server compressed the image anyway)",
                http_status=http_status,
            )
        d = zlib.decompressobj(wbits)
        try:
            out = d.decompress(body, max_bytes + 1)
        except zlib.error as e:
            raise _Fail(
                "failed_to_decode",
                f"Content-Encoding {coding}: the compressed body is corrupt ({e})",
                http_status=http_status,
            ) from None
        if len(out) > max_bytes:
            raise _Fail(
                "too_large",
                f"Content-Encoding {coding}: {len(body)} bytes inflate past max_bytes "
                f"{max_bytes} (stopped there)",
                http_status=http_status,
            )
        if not d.eof:
            raise _Fail(
                "failed_to_decode",
                f"Content-Encoding {coding}: the compressed body is truncated "
                f"({len(body)} bytes, inflated {len(out)} before it ended)",
                http_status=http_status,
            )
        body = out
    return body


@dataclass
class _HostState:
    slots: threading.BoundedSemaphore
    robots: urllib.robotparser.RobotFileParser | None = None
    robots_loaded: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class Fetcher:
    """Fetches URLs; one instance per Spark task, shared by its threads (thread-safe)."""

    def __init__(self, cfg: DownloadSettings):
        self.cfg = cfg
        self.ua = user_agent(cfg.user_agent_token)
        self.allow = parse_networks(cfg.allow_networks)
        self._hosts: dict[str, _HostState] = {}
        self._hosts_lock = threading.Lock()
        self._local = threading.local()
        self._ssl = ssl.create_default_context()
        self._ssl.sslsocket_class = _DeadlineSSLSocket  # TLS reads keep the deadline too
        self._reject_ct = [c.lower() for c in cfg.reject_content_types]
        self._dns: dict[tuple[str, int], tuple[float, list[str], str | None]] = {}

    # ---- connections (one keep-alive connection per (scheme, ip, port) per thread) ----
    def _conns(self) -> dict:
        d = getattr(self._local, "conns", None)
        if d is None:
            d = self._local.conns = {}
        return d

    def _connection(self, scheme: str, host: str, ip: str, port: int) -> http.client.HTTPConnection:
        key = (scheme, host, ip, port)
        conns = self._conns()
        conn = conns.get(key)
        if conn is None:
            if scheme == "https":
                conn = _PinnedHTTPS(
                    ip, port, host, self.cfg.connect_timeout_s, self.cfg.read_timeout_s, self._ssl
                )
            else:
                conn = _PinnedHTTP(ip, port, self.cfg.connect_timeout_s, self.cfg.read_timeout_s)
            conns[key] = conn
        return conn

    def _drop(self, scheme: str, host: str, ip: str, port: int) -> None:
        conn = self._conns().pop((scheme, host, ip, port), None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for conn in self._conns().values():
            conn.close()
        self._conns().clear()

    def _check_host(self, host: str, port: int) -> tuple[list[str], str | None]:
        """check_host with a per-task cache: one DNS lookup + decision per host and port.

        Safe to cache because we connect to the address that was checked, never to the
        name again; entries expire after _DNS_TTL_S.
        """
        key = (host, port)
        now = time.monotonic()
        hit = self._dns.get(key)
        if hit is not None and hit[0] > now:
            return hit[1], hit[2]
        ips, refused = check_host(host, port, self.allow)
        self._dns[key] = (now + _DNS_TTL_S, ips, refused)
        return ips, refused

    def _host(self, host: str) -> _HostState:
        with self._hosts_lock:
            st = self._hosts.get(host)
            if st is None:
                st = self._hosts[host] = _HostState(
                    threading.BoundedSemaphore(self.cfg.per_host_concurrency)
                )
            return st

    # ---- one request ----
    def _request(
        self, url: str, deadline: float, max_bytes: int, check_opt_out: bool
    ) -> tuple[int, dict, list[str], bytes | None, str | None]:
        """GET url once: (http status, headers lower-cased, X-Robots-Tag values, body, location).

        `check_opt_out` (image requests, not robots.txt): apply X-Robots-Tag and the
        Content-Type refusal. Raises _Fail for everything that is not a usable response.
        """
        parts = urlsplit(url)
        scheme = (parts.scheme or "").lower()
        if scheme not in ("http", "https"):
            raise _Fail("failed_to_download", f"unsupported URL scheme {scheme!r}")
        host = parts.hostname
        if not host:
            raise _Fail("failed_to_download", "URL has no host")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError as e:
            raise _Fail("failed_to_download", f"bad port: {e}") from None
        try:
            ips, refused = self._check_host(host, port)
        except (OSError, UnicodeError) as e:
            raise _Fail(
                "failed_to_download", f"DNS: {e}", retryable=isinstance(e, socket.timeout)
            ) from None
        if refused and self.cfg.ssrf_guard:
            raise _Fail("blocked_address", f"{host}: {refused}")
        ip = ips[0]
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        default_port = (scheme == "https" and port == 443) or (scheme == "http" and port == 80)
        host_header = (f"[{host}]" if ":" in host else host) + ("" if default_port else f":{port}")
        if time.monotonic() >= deadline:
            raise _Fail("timeout", "deadline passed before connecting")
        conn = self._connection(scheme, host, ip, port)
        _set_deadline(conn, deadline)
        reused = conn.sock is not None
        try:
            try:
                self._send(conn, path, host_header)
                resp = conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                if not reused:
                    raise
                # the server closed an idle keep-alive connection: reconnect once
                self._drop(scheme, host, ip, port)
                conn = self._connection(scheme, host, ip, port)
                _set_deadline(conn, deadline)
                self._send(conn, path, host_header)
                resp = conn.getresponse()
            headers = {k.lower(): v for k, v in resp.getheaders()}
            robots = resp.headers.get_all("X-Robots-Tag") or []
            code = resp.status
            location = headers.get("location")
            if (
                check_opt_out
                and robots
                and is_opted_out(robots, self.cfg.user_agent_token, self.cfg.opt_out_tags)
            ):
                self._drop(scheme, host, ip, port)
                raise _Fail("opted_out", f"X-Robots-Tag: {'; '.join(robots)}", http_status=code)
            if code != 200:
                # small error/redirect bodies are drained so the connection can be reused
                body = self._read_body(resp, deadline, 64 * 1024, headers, drain=True)
                if body is None:
                    self._drop(scheme, host, ip, port)
                return code, headers, robots, None, location
            ctype = headers.get("content-type", "").lower()
            if check_opt_out and any(ctype.startswith(c) for c in self._reject_ct):
                self._drop(scheme, host, ip, port)
                raise _Fail(
                    "wrong_content_type",
                    f"Content-Type {ctype!r} is not an image",
                    http_status=code,
                )
            body = self._read_body(resp, deadline, max_bytes, headers, drain=False)
            if resp.will_close:
                self._drop(scheme, host, ip, port)
            encoding = headers.get("content-encoding")
            if encoding and body:
                body = _inflate(body, encoding, max_bytes, code)
            return code, headers, robots, body, location
        except _Fail:
            self._drop(scheme, host, ip, port)
            raise
        except TimeoutError:
            self._drop(scheme, host, ip, port)
            # the socket waited for min(its timeout, time left): which one ran out?
            if time.monotonic() >= deadline - 0.002:
                raise _Fail(
                    "timeout",
                    f"total deadline timeout_s={self.cfg.timeout_s}s passed waiting for {host}",
                    retryable=True,
                ) from None
            raise _Fail(
                "timeout",
                f"no answer from {host} within connect_timeout_s={self.cfg.connect_timeout_s}s"
                f" / read_timeout_s={self.cfg.read_timeout_s}s",
                retryable=True,
            ) from None
        except (OSError, http.client.HTTPException, ssl.SSLError) as e:
            self._drop(scheme, host, ip, port)
            raise _Fail("failed_to_download", f"{type(e).__name__}: {e}", retryable=True) from None

    def _send(self, conn: http.client.HTTPConnection, path: str, host_header: str) -> None:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host_header)
        conn.putheader("User-Agent", self.ua)
        conn.putheader("Accept", "image/webp,image/png,image/jpeg,image/*;q=0.8")
        conn.endheaders()

    def _read_body(
        self,
        resp: http.client.HTTPResponse,
        deadline: float,
        max_bytes: int,
        headers: dict,
        drain: bool,
    ) -> bytes | None:
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > max_bytes:
            if drain:
                return None
            raise _Fail(
                "too_large",
                f"Content-Length {length} > max_bytes {max_bytes}",
                http_status=resp.status,
            )
        chunks: list[bytes] = []
        total = 0
        while True:
            if time.monotonic() > deadline:
                raise _Fail(
                    "timeout",
                    f"total deadline {self.cfg.timeout_s}s passed while reading the body (read {total} bytes)",
                    http_status=resp.status,
                )
            if resp.length is not None and resp.length <= 0:
                break
            chunk = resp.read1(_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                if drain:
                    return None
                raise _Fail(
                    "too_large",
                    f"body passed max_bytes {max_bytes} (stopped reading)",
                    http_status=resp.status,
                )
            chunks.append(chunk)
        # marks the response finished so the keep-alive connection can send the next request
        resp.close()
        return b"".join(chunks)

    # ---- robots.txt (optional, cached per host) ----
    def _robots_allows(self, url: str, deadline: float) -> bool:
        parts = urlsplit(url)
        key = f"{parts.scheme}://{parts.netloc}".lower()
        st = self._host(key)
        with st.lock:
            if not st.robots_loaded:
                st.robots_loaded = True
                rp = urllib.robotparser.RobotFileParser()
                try:
                    code, _, _, body, _ = self._request(
                        key + "/robots.txt", deadline, 512 * 1024, check_opt_out=False
                    )
                except _Fail:
                    code, body = 0, None
                if code == 200 and body is not None:
                    rp.parse(body.decode("utf-8", "replace").splitlines())
                    st.robots = rp
                elif code in (401, 403):
                    rp.disallow_all = True
                    st.robots = rp
                # 404 / errors: no robots.txt, everything allowed (the usual crawler rule)
        return st.robots is None or st.robots.can_fetch(self.cfg.user_agent_token, url)

    # ---- the public call ----
    def fetch(self, url: str) -> FetchResult:
        cfg = self.cfg
        t0 = time.monotonic()
        deadline = t0 + cfg.timeout_s
        attempts = 0
        last: _Fail | None = None
        while True:
            attempts += 1
            try:
                res = self._fetch_once(url, deadline)
                res.attempts, res.seconds = attempts, time.monotonic() - t0
                return res
            except _Fail as f:
                last = f
            if not last.retryable or attempts > cfg.retries:
                break
            wait = cfg.backoff_s * (2 ** (attempts - 1))
            if last.retry_after is not None:
                if last.retry_after > cfg.max_retry_after_s:
                    last.error += f" (Retry-After {last.retry_after:.0f}s > max_retry_after_s)"
                    break
                wait = max(wait, last.retry_after)
            if time.monotonic() + wait >= deadline:
                break
            time.sleep(wait)
        return FetchResult(
            last.status,
            None,
            last.http_status,
            last.error,
            attempts=attempts,
            seconds=time.monotonic() - t0,
        )

    def _fetch_once(self, url: str, deadline: float) -> FetchResult:
        cfg = self.cfg
        seen = {url}
        current = url
        for _hop in range(cfg.max_redirects + 1):
            if cfg.respect_robots_txt and not self._robots_allows(current, deadline):
                raise _Fail("opted_out", "robots.txt disallows this URL for our user agent")
            host = (urlsplit(current).hostname or "").lower()
            st = self._host(host)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not st.slots.acquire(timeout=remaining):
                raise _Fail("timeout", "deadline passed waiting for a per-host slot")
            try:
                code, headers, _, body, location = self._request(
                    current, deadline, cfg.max_bytes, check_opt_out=True
                )
            finally:
                st.slots.release()
            if code in REDIRECT_CODES and location:
                nxt = urljoin(current, location.strip())
                if nxt in seen:
                    raise _Fail(
                        "too_many_redirects", f"redirect loop back to {nxt}", http_status=code
                    )
                seen.add(nxt)
                current = nxt
                continue
            if code == 200 and body is not None:
                return FetchResult(
                    "success", body, code, None, headers.get("content-type"), current
                )
            retryable = code in RETRYABLE_HTTP
            ra = _retry_after(headers.get("retry-after")) if code in (429, 503) else None
            raise _Fail(
                "http_error", f"HTTP {code}", http_status=code, retry_after=ra, retryable=retryable
            )
        raise _Fail("too_many_redirects", f"more than max_redirects={cfg.max_redirects} redirects")

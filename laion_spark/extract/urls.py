"""Image URL rules: resolve against the page, normalise, reject with a reason.

Every function is pure (no I/O), so the same decision is made on every executor.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

from laion_spark.ids import normalize_url

_DEFAULT_PORTS = {"http": 80, "https": 443}

# rejection reasons (keys of extract_stats.rejected)
EMPTY_URL = "empty_url"
DATA_URL = "data_url"
JAVASCRIPT_URL = "javascript_url"
BAD_SCHEME = "bad_scheme"
INVALID_URL = "invalid_url"
URL_TOO_LONG = "url_too_long"
BAD_EXTENSION = "bad_extension"

# WHATWG URL parsing strips ASCII tab/newline anywhere and C0 controls/space at the ends
_TAB_NL = re.compile(r"[\t\n\r]")
# characters a browser would percent-encode in a path/query (space, non-ASCII, quotes...)
_SAFE = "!#$%&'()*+,/:;=?@[]~-._"
_NEEDS_QUOTE = re.compile(r"[\x00-\x20\x7f]")


def url_extension(url: str) -> str:
    """Lower-case extension of the LAST path segment ('' if none).

    `.../Flag.svg/18px-Flag.svg.png` -> 'png' (a Wikimedia PNG thumbnail of an SVG), where
    LAION's substring test (".svg" in url) would have dropped it.
    """
    try:
        path = urlsplit(url).path
    except ValueError:
        return ""
    seg = path.rsplit("/", 1)[-1]
    if "." not in seg:
        return ""
    return seg.rsplit(".", 1)[-1].lower()


def target_uri(value: str | None) -> str | None:
    """A `WARC-Target-URI` as a URL: WARC 1.0's grammar wrote it in angle brackets,
    `<http://...>`, and some writers still do (wget, for one); they are not part of it."""
    if value is not None and len(value) >= 2 and value[0] == "<" and value[-1] == ">":
        return value[1:-1]
    return value


def _clean_raw(raw: str) -> str:
    raw = raw.strip(" \t\n\r\f\v\x00\x0b")  # noqa: B005 (a set of characters)
    if "\t" in raw or "\n" in raw or "\r" in raw:
        raw = _TAB_NL.sub("", raw)
    return raw


def resolve_base(page_url: str, base_href: str | None) -> str:
    """The URL relative links resolve against: <base href> (itself resolved) or the page."""
    if base_href:
        b = _clean_raw(base_href)
        if b and not b.lower().startswith(("data:", "javascript:")):
            try:
                joined = urljoin(page_url, b)
                if urlsplit(joined).scheme in ("http", "https"):
                    return joined
            except ValueError:
                pass
    return page_url


@lru_cache(maxsize=256)
def base_parts(base: str) -> tuple[str, str, str] | None:
    """(scheme, 'scheme://netloc', 'scheme://netloc/dir/') of a page URL, once per page."""
    try:
        scheme, netloc, path, _, _ = urlsplit(base)
    except ValueError:
        return None
    if scheme not in ("http", "https") or not netloc or "/." in path or "\\" in path:
        return None
    d = path.rsplit("/", 1)[0] + "/" if path else "/"
    return scheme, f"{scheme}://{netloc}", f"{scheme}://{netloc}{d}"


def join_url(base: str, raw: str) -> str:
    """urljoin(base, raw), with the common cases done by string concatenation.

    Protocol-relative, root-relative and plain relative paths without dot segments, query,
    fragment or colon are joined directly (urljoin's own cost dominated extraction); anything
    else goes through urljoin. A fuzz test checks the two agree.
    """
    parts = base_parts(base)
    if parts is not None and raw[:1] == ".":
        joined = _join_dot_segments(parts, raw)
        if joined is not None:
            return joined
    if (
        parts is None
        or not raw
        or ":" in raw
        or "/." in raw
        or "//" in raw[1:]  # urljoin collapses empty path segments; keep its behaviour
        or raw[0] in "?#."
        or raw[0] <= " "
        or raw[-1] <= " "
        or "\t" in raw
        or "\n" in raw
        or "\r" in raw
    ):
        return urljoin(base, raw)  # the rare cases: urljoin's full rules
    scheme, origin, directory = parts
    if raw.startswith("//"):
        if len(raw) < 3 or raw[2] in "/?#":
            return urljoin(base, raw)  # no host: urljoin's own rules
        return f"{scheme}:{raw}"
    if raw.startswith("/"):
        return origin + raw
    if "\\" in raw:
        return urljoin(base, raw)
    return directory + raw


def _join_dot_segments(parts: tuple[str, str, str], raw: str) -> str | None:
    """`../../img/x.jpg` and `./x.jpg` against the base directory, as urljoin resolves them
    (".." above the root is dropped); None for any other shape (urljoin decides)."""
    i = up = 0
    while True:
        if raw.startswith("../", i):
            up += 1
            i += 3
        elif raw.startswith("./", i):
            i += 2
        else:
            break
    rest = raw[i:]
    _, origin, directory = parts
    dpath = directory[len(origin) :]
    if (
        not i
        or not rest
        or rest[0] in "?#./"
        or rest[-1] <= " "
        or "/." in rest
        or "//" in rest
        or "//" in dpath  # urljoin would collapse it; keep its behaviour
        or not _PLAIN_REST.isdisjoint(rest)
    ):
        return None
    segs = dpath.split("/")[1:-1]
    keep = segs[: max(0, len(segs) - up)]
    return origin + ("/" + "/".join(keep) + "/" if keep else "/") + rest


# characters after the dot segments that send a join to urljoin
_PLAIN_REST = frozenset(":\\\t\n\r")


def resolve_image_url(
    raw: str | None, base: str, max_chars: int = 2048, drop_ext: frozenset[str] = frozenset()
) -> tuple[str | None, str | None]:
    """(absolute normalised URL, None) or (None, rejection reason)."""
    if raw is None:
        return None, EMPTY_URL
    raw = _clean_raw(raw)
    if not raw:
        return None, EMPTY_URL
    if len(raw) > max_chars:
        return None, URL_TOO_LONG
    head = raw[:11].lower()
    if head.startswith("data:"):
        return None, DATA_URL
    if head.startswith("javascript:"):
        return None, JAVASCRIPT_URL
    try:
        url = raw if head.startswith(("http://", "https://")) else join_url(base, raw)
        url, path = _normalize(url)
    except (ValueError, UnicodeError):
        return None, INVALID_URL
    if url is None:
        return None, path  # path carries the reason
    if len(url) > max_chars:
        return None, URL_TOO_LONG
    if drop_ext and has_dropped_extension(path, drop_ext):
        return None, BAD_EXTENSION
    return url, None


def has_dropped_extension(path: str, drop_ext: frozenset[str]) -> bool:
    """The image type by the LAST path segment's extension (not a substring of the URL)."""
    seg = path.rsplit("/", 1)[-1]
    return "." in seg and seg.rsplit(".", 1)[-1].lower() in drop_ext


_BAD_HOST_CHARS = frozenset(" <>\"'\\{}|^`")
# The common shape, handled without urlsplit: lower-case http(s) scheme, a plain ASCII host
# (no port, no userinfo), path and query of printable ASCII only (nothing to percent-encode).
# For such a URL urlsplit + the rules below reduce to: lower-case the host, drop the
# fragment, "/" for an empty path; a fuzz test checks both paths agree.
_SIMPLE_URL = re.compile(
    r"(https?)://([A-Za-z0-9.-]+)(/[^\x00-\x20#?\x7f-\U0010ffff]*)?"
    r"(?:\?([^\x00-\x20#\x7f-\U0010ffff]*))?(?:#.*)?",
    re.S,
)


def _normalize(url: str) -> tuple[str | None, str]:
    """(normalised absolute URL, its path) or (None, reason), in ONE split of the URL.

    Same result as laion_spark.ids.normalize_url (lower-case scheme/host, no default port,
    no fragment, "/" for an empty path), so the sample_id can hash it directly; the test
    suite checks normalize_url(result) == result on fuzzed input.
    """
    m = _SIMPLE_URL.fullmatch(url)
    if m is not None:
        scheme, host, path, query = m.groups()
        path = path or "/"
        if query:
            return f"{scheme}://{host.lower()}{path}?{query}", path
        return f"{scheme}://{host.lower()}{path}", path
    return _normalize_general(url)


def _normalize_general(url: str) -> tuple[str | None, str]:
    """_normalize for any URL (the reference the fast path is checked against)."""
    scheme, netloc, path, query, _ = urlsplit(url)
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        return None, BAD_SCHEME
    userinfo, _, hostport = netloc.rpartition("@")
    if hostport.startswith("["):  # IPv6 literal: let the general code handle it
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a bad port
        if not parts.hostname:
            return None, INVALID_URL
        path, query = _encode(path, query)
        out = normalize_url(urlunsplit((scheme, netloc, path, query, "")))
        return out, path
    host, _, port = hostport.partition(":")
    host = host.lower()
    if not host or not _BAD_HOST_CHARS.isdisjoint(host):
        return None, INVALID_URL
    if port:
        if not (port.isascii() and port.isdigit()) or int(port) > 65535:
            return None, INVALID_URL
        port_i = int(port)
        port = "" if _DEFAULT_PORTS.get(scheme) == port_i else str(port_i)
    if not host.isascii():
        host = host.encode("idna").decode("ascii")  # IDN -> punycode, as browsers send it
    if userinfo:
        # as ids.normalize_url: user[:password], an empty password dropped, and nothing at
        # all for an empty user and password ("http://:@h/" is "http://h/")
        user, _, password = userinfo.partition(":")
        cred = f"{user}:{password}" if password else user
        if cred:
            host = f"{cred}@{host}"
    if port:
        host = f"{host}:{port}"
    path, query = _encode(path, query)
    path = path or "/"
    return (f"{scheme}://{host}{path}?{query}" if query else f"{scheme}://{host}{path}"), path


def _encode(path: str, query: str) -> tuple[str, str]:
    """Percent-encode path and query as a browser would, when they hold anything to encode:
    non-ASCII, space, C0 controls or DEL (left raw, a trailing control char would be
    stripped by ids.normalize_url and the two would disagree)."""
    if path.isascii() and query.isascii() and not _NEEDS_QUOTE.search(path + query):
        return path, query
    return quote(path, safe=_SAFE), quote(query, safe=_SAFE)


def largest_srcset(srcset: str | None) -> str | None:
    """The candidate with the largest width (`640w`) or density (`2x`) of a srcset."""
    if not srcset:
        return None
    best, best_size = None, -1.0
    for cand in srcset.split(","):
        bits = cand.strip().split()
        if not bits:
            continue
        size = 1.0
        if len(bits) > 1:
            d = bits[-1].lower()
            try:
                size = float(d[:-1]) if d[-1:] in ("w", "x") else 1.0
            except ValueError:
                size = 1.0
        if size > best_size:
            best, best_size = bits[0], size
    return best


# Raw `src` values that page_resolver resolves without the general code. Absolute: the
# _SIMPLE_URL shape with no whitespace or control character anywhere (so _clean_raw would
# change nothing). Relative: printable ASCII, no ':' or '\', not starting with '/', '?',
# '#' or '.', optional ?query and #fragment (root-relative "/x" is checked separately).
_RAW_ABS = re.compile(
    r"(https?)://([A-Za-z0-9.-]+)(/[^\x00-\x20#?\x7f-\U0010ffff]*)?"
    r"(?:\?([^\x00-\x20#\x7f-\U0010ffff]*))?(?:#[^\x00-\x20]*)?"
)
_RAW_REL = re.compile(
    r"(/?[^\x00-\x20#?/.:\\\x7f-\U0010ffff][^\x00-\x20#?:\\\x7f-\U0010ffff]*)"
    r"(?:\?([^\x00-\x20#\x7f-\U0010ffff]*))?(?:#[^\x00-\x20]*)?"
)
Resolver = Callable[[str | None], tuple[str | None, str | None]]


def page_origin(parts: tuple[str, str, str] | None) -> tuple[str, str] | None:
    """(lower-cased 'scheme://host', directory path) of a base split by base_parts, when
    it has the plain shape relative `src` values can be concatenated onto; else None."""
    if parts is None:
        return None
    m = _SIMPLE_URL.fullmatch(parts[2])
    if m is None or m.group(4) is not None or "//" in (m.group(3) or ""):
        return None
    return f"{m.group(1)}://{m.group(2).lower()}", m.group(3) or "/"


def page_resolver(
    base: str, max_chars: int = 2048, drop_ext: frozenset[str] = frozenset()
) -> Resolver:
    """resolve_image_url(raw, base, max_chars, drop_ext) as a function of raw, for one page.

    The page's base is split once; the common shapes of `src` (absolute http(s) URLs and
    same-site relative paths of plain printable ASCII) are resolved by one regex match and
    string concatenation, everything else by resolve_image_url. Same results (fuzz-tested).
    """
    parts = base_parts(base)
    origin, directory = page_origin(parts) or (None, None)

    def resolve(raw: str | None) -> tuple[str | None, str | None]:
        if raw:
            m = _RAW_ABS.fullmatch(raw)
            if m is None and raw[0] == "." and parts is not None:
                # ../x.jpg: joined as join_url does; then the absolute fast path
                joined = _join_dot_segments(parts, raw)
                m = _RAW_ABS.fullmatch(joined) if joined is not None else None
            if m is not None:
                scheme, host, path, query = m.groups()
                path = path or "/"
                url = f"{scheme}://{host.lower()}{path}"
            elif (
                origin is not None
                and "/." not in raw
                and "//" not in raw
                and (m := _RAW_REL.fullmatch(raw)) is not None
            ):
                path, query = m.groups()
                if path[0] != "/":
                    path = directory + path
                url = origin + path
            else:
                return resolve_image_url(raw, base, max_chars, drop_ext)
            if query:
                url = f"{url}?{query}"
            if len(raw) > max_chars or len(url) > max_chars:
                return None, URL_TOO_LONG
            if drop_ext and has_dropped_extension(path, drop_ext):
                return None, BAD_EXTENSION
            return url, None
        return resolve_image_url(raw, base, max_chars, drop_ext)

    return resolve

"""The one stable key: `sample_id`.

    sample_id = sha256( normalize_url(url) + "\\t" + normalize_caption(caption) )[:32 hex]

- normalize_url: strip surrounding whitespace; lower-case scheme and host; drop default
  ports (:80 for http, :443 for https) and the #fragment; an empty path becomes "/".
  Path, query and their percent-encoding are kept as they are (servers may treat them
  case- and encoding-sensitively).
- normalize_caption: Unicode NFC, whitespace runs collapsed to one space, stripped.
- 128 bits of SHA-256 as 32 lower-case hex characters: collisions are negligible at
  10^12 samples and the value is identical on every engine and language.
"""

from __future__ import annotations

import hashlib
import unicodedata
from urllib.parse import urlsplit, urlunsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_url(url: str) -> str:
    url = (url or "").strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if not scheme or not host:
        return url
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if ":" not in host else f"[{host}]"
    if parts.username or parts.password:
        cred = parts.username or ""
        if parts.password:
            cred += ":" + parts.password
        netloc = f"{cred}@{netloc}"
    if port is not None and _DEFAULT_PORTS.get(scheme) != port:
        netloc += f":{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def normalize_caption(caption: str | None) -> str:
    return " ".join(unicodedata.normalize("NFC", caption or "").split())


def sample_id(url: str, caption: str | None) -> str:
    key = normalize_url(url) + "\t" + normalize_caption(caption)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def sample_id_int64(sid: str) -> int:
    """Non-negative int64 derived from a sample_id (for faiss ids); 63 bits of the hash."""
    return int(sid[:16], 16) & 0x7FFF_FFFF_FFFF_FFFF

"""WAT (Common Crawl metadata JSON) record -> Page.

Path in the JSON: Envelope.Payload-Metadata.HTTP-Response-Metadata.HTML-Metadata, with
`Links` entries like {"path": "IMG@/src", "url": ..., "alt": ...} and `Head.Base`. The page
URL is Envelope.WARC-Header-Metadata.WARC-Target-URI (the record's WARC header as fallback).

Attribute values are decoded once (laion_spark.extract.entities): `decoded=True` for a WAT
whose writer already decoded them (Common Crawl's since CC-MAIN-2019-26), else here.
The page's HTTP status (`Response-Message.Status`) gets the WARC path's rule
(pairs.http_status_rejection): a non-2xx page raises PageRejected.
"""

from __future__ import annotations

from typing import Any

from laion_spark.extract.entities import unescape_attribute
from laion_spark.extract.license import page_license

try:  # orjson is ~3x faster on WAT records; stdlib json is the fallback
    import orjson as _json

    _loads = _json.loads
    _JSONError: tuple[type[Exception], ...] = (_json.JSONDecodeError, ValueError, TypeError)
except ImportError:  # pragma: no cover
    import json as _json  # type: ignore[no-redef]

    _loads = _json.loads
    _JSONError = (ValueError, TypeError)

from laion_spark.extract.pairs import (
    Page,
    PageRejected,
    http_status_code,
    http_status_rejection,
)
from laion_spark.extract.urls import target_uri

INVALID_JSON = "invalid_json"
BAD_WAT_SHAPE = "bad_wat_shape"


class WatError(ValueError):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def decoded_text(v: Any, decoded: bool = False) -> str | None:
    """A WAT string value as its HTML attribute value: decoded here unless the WAT writer
    already did (`decoded`); None for anything that is not a string."""
    if not isinstance(v, str):
        return None
    return v if decoded else unescape_attribute(v)


def http_status(env: dict) -> int | None:
    """The HTTP status of a WAT record's response (None when it does not say)."""
    return http_status_code(
        _get(env, "Payload-Metadata", "HTTP-Response-Metadata", "Response-Message", "Status")
    )


def parse_wat_json(
    payload: bytes | str, record_url: str | None = None, decoded: bool = False
) -> Page | None:
    """Page with IMG links of a WAT record; None when it is not an HTML response record.

    `decoded`: the WAT's attribute values are already decoded (do not decode again).
    Raises WatError(invalid_json | bad_wat_shape) on broken input, PageRejected for a page
    the status rule refuses.
    """
    try:
        doc = _loads(payload)
    except _JSONError as e:
        raise WatError(INVALID_JSON, str(e)[:200]) from None
    if not isinstance(doc, dict):
        raise WatError(BAD_WAT_SHAPE, "top level is not an object")
    env = doc.get("Envelope")
    if not isinstance(env, dict):
        raise WatError(BAD_WAT_SHAPE, "no Envelope")
    meta = _get(env, "Payload-Metadata", "HTTP-Response-Metadata", "HTML-Metadata")
    if meta is None:
        return None  # request / metadata records, non-HTML responses
    if not isinstance(meta, dict):
        raise WatError(BAD_WAT_SHAPE, "HTML-Metadata is not an object")
    why = http_status_rejection(http_status(env))
    if why:
        raise PageRejected(why)
    page_url = _get(env, "WARC-Header-Metadata", "WARC-Target-URI") or record_url
    if not isinstance(page_url, str) or not (page_url := target_uri(page_url)):
        raise WatError(BAD_WAT_SHAPE, "no WARC-Target-URI")
    head = meta.get("Head")
    base = _get(head, "Base") if isinstance(head, dict) else None
    if isinstance(base, dict):  # some writers nest it
        base = base.get("href") or base.get("url")
    links = meta.get("Links")
    if links is None:
        links = []
    if not isinstance(links, list):
        raise WatError(BAD_WAT_SHAPE, "Links is not a list")
    images: list[tuple[str | None, str | None]] = []
    lic_links: list[tuple[str | None, str | None]] = []
    # most pages link no license: then only IMG links matter (the loop's main cost)
    raw = payload if isinstance(payload, str) else None
    maybe_cc = "reativecommons" in raw if raw is not None else b"reativecommons" in payload
    if not maybe_cc:
        # the common case: only IMG links (and a BASE@/href while no base is known) matter,
        # picked in one comprehension; the same result as the loop below
        picked = [
            link
            for link in links
            if link.__class__ is dict
            and ((p := link.get("path")) == "IMG@/src" or p == "BASE@/href")
        ]
        for link in picked:
            if link["path"] == "IMG@/src":
                u, a = link.get("url"), link.get("alt")
                if u.__class__ is str and a.__class__ is str and "&" not in u and "&" not in a:
                    images.append((u, a))
                else:
                    images.append((decoded_text(u, decoded), decoded_text(a, decoded)))
            elif base is None:
                base = link.get("url")
        links = ()
    for link in links:
        if not isinstance(link, dict):
            continue
        path = link.get("path")
        if path == "IMG@/src":
            images.append(
                (decoded_text(link.get("url"), decoded), decoded_text(link.get("alt"), decoded))
            )
        elif not maybe_cc or not isinstance(path, str):
            if path == "BASE@/href" and base is None:
                base = link.get("url")
            continue
        elif path.startswith(("A@", "LINK@")):
            url = link.get("url")
            if isinstance(url, str) and "creativecommons.org" in url.lower():
                rel = link.get("rel")
                lic_links.append((url, rel if isinstance(rel, str) else None))
        elif path.startswith("BASE@") and base is None:
            base = link.get("url")
    if isinstance(head, dict):
        for link in head.get("Link") or []:
            if isinstance(link, dict) and isinstance(link.get("url"), str):
                rel = link.get("rel")
                lic_links.append((link["url"], rel if isinstance(rel, str) else None))
    if lic_links and not decoded:
        lic_links = [(unescape_attribute(u), decoded_text(r)) for u, r in lic_links]
    return Page(
        url=page_url,
        images=images,
        base_href=decoded_text(base, decoded),
        license=page_license(lic_links) if lic_links else None,
    )

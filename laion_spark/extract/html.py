"""HTML response body -> Page, with selectolax (lexbor engine).

`<img src alt>` (and optionally the largest `srcset` candidate), `<base href>`, and Creative
Commons links (`<a|link rel=license href>` or any link to creativecommons.org/licenses).
"""

from __future__ import annotations

import codecs
import re

from laion_spark.extract.license import page_license
from laion_spark.extract.pairs import Page
from laion_spark.extract.urls import largest_srcset

UNDECODABLE_HTML = "undecodable_html"
HTML_PARSE_ERROR = "html_parse_error"

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]{1,40})""", re.I)
# a page where more than this share of characters fails to decode is not text
_MAX_BAD_SHARE = 0.01


class HtmlError(ValueError):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _codec(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return codecs.lookup(name.strip().strip("\"'")).name
    except (LookupError, ValueError):
        return None


def decode_html(body: bytes, http_charset: str | None = None) -> str:
    """Text of an HTML body: BOM, then HTTP charset, then <meta charset>, then UTF-8.

    A few bad bytes are replaced; a body that is mostly undecodable (binary) raises
    HtmlError(undecodable_html) so it is counted, not parsed into garbage.
    """
    if b"\x00" in body[:4096] and not body.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise HtmlError(UNDECODABLE_HTML, "NUL bytes: binary content")
    enc = None
    if body.startswith(codecs.BOM_UTF8):
        enc, body = "utf-8", body[3:]
    elif body.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        enc = "utf-16"
    enc = enc or _codec(http_charset)
    if enc is None:
        m = _META_CHARSET.search(body[:4096])
        enc = _codec(m.group(1).decode("ascii", "replace")) if m else None
    enc = enc or "utf-8"
    try:
        return body.decode(enc)
    except UnicodeDecodeError:
        text = body.decode(enc, errors="replace")
    except LookupError:
        text = body.decode("utf-8", errors="replace")
    bad = text.count("\ufffd")
    if bad > max(8, _MAX_BAD_SHARE * len(text)):
        raise HtmlError(UNDECODABLE_HTML, f"{bad} undecodable characters as {enc}")
    return text


def parse_html(
    body: bytes | str, page_url: str, http_charset: str | None = None, use_srcset: bool = False
) -> Page:
    """Page with the <img> tags of an HTML document (raises HtmlError)."""
    from selectolax.lexbor import LexborHTMLParser

    text = body if isinstance(body, str) else decode_html(body, http_charset)
    try:
        tree = LexborHTMLParser(text)
    except Exception as e:  # lexbor raises on allocation failure / internal errors
        raise HtmlError(HTML_PARSE_ERROR, str(e)[:200]) from None
    base = None
    base_node = tree.css_first("base[href]")
    if base_node is not None:
        base = base_node.attributes.get("href")
    images: list[tuple[str | None, str | None]] = []
    for node in tree.css("img"):
        attrs = node.attributes
        src = attrs.get("src")
        if use_srcset:
            src = largest_srcset(attrs.get("srcset")) or src
        if src is None and "src" not in attrs:
            continue  # no src at all: WAT lists no IMG@/src link for it either
        images.append((src, attrs.get("alt")))
    lic_links: list[tuple[str | None, str | None]] = []
    for node in tree.css("a[href], link[href]"):
        attrs = node.attributes
        href = attrs.get("href")
        if href and "creativecommons.org" in href.lower():
            lic_links.append((href, attrs.get("rel")))
    return Page(
        url=page_url,
        images=images,
        base_href=base,
        license=page_license(lic_links) if lic_links else None,
    )

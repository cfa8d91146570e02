"""A small synthetic Common Crawl: a real gzipped WARC and the matching WAT file.

    paths = write_synthetic_crawl("/tmp/crawl", [
        {"url": "http://127.0.0.1:8000/page/1.html",
         "images": [("http://127.0.0.1:8000/img/1.jpg", "a red circle on the left")],
         "license": "https://creativecommons.org/licenses/by/4.0/"},
    ])
    # -> {"warc": ".../CC-MAIN-DEMO-00000.warc.gz", "wat": ".../CC-MAIN-DEMO-00000.warc.wat.gz"}

Records are laid out as Common Crawl writes them: one gzip member per record; the WARC has
warcinfo + request/response per page; the WAT has warcinfo + one JSON metadata record per
WARC record with Envelope.Payload-Metadata.HTTP-Response-Metadata.HTML-Metadata.Links.
An optional "links": [(href, text), ...] adds ordinary <a> links (WAT `A@/href`), as real
pages have many. Each page also gets junk images the extract stage must reject (a data: URI, an SVG logo, a
GIF spacer, a too-short alt, an image without alt), and same-host image URLs are written
relative (root-relative and path-relative) so URL resolution is exercised.
"""

from __future__ import annotations

import gzip
import html
import io
import json
import os
import posixpath
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit


def _uuid(*parts: str) -> str:
    return f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, '|'.join(parts))}>"


def _warc_record(headers: list[tuple[str, str]], block: bytes) -> bytes:
    head = "WARC/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    head += f"Content-Length: {len(block)}\r\n\r\n"
    return head.encode("utf-8") + block + b"\r\n\r\n"


def _member(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=6, mtime=0) as g:
        g.write(data)
    return buf.getvalue()


def _written_src(img_url: str, page_url: str, i: int) -> str:
    """How the page's HTML spells an image URL: same-host URLs are made relative."""
    p, q = urlsplit(page_url), urlsplit(img_url)
    if (p.scheme, p.netloc) != (q.scheme, q.netloc) or i % 3 == 0:
        return img_url
    path = q.path + (f"?{q.query}" if q.query else "")
    if i % 3 == 1:
        return path  # root-relative: /img/3.jpg
    page_dir = posixpath.dirname(p.path) or "/"
    return posixpath.relpath(q.path, page_dir) + (f"?{q.query}" if q.query else "")


def _junk(page_url: str) -> list[tuple[str, str | None]]:
    """Images every LAION-style extractor must reject."""
    return [
        (
            "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYAAAAAMAASsJTYQAAAAASUVORK5CYII=",
            "a tiny inline pixel image",
        ),
        ("/static/logo.svg", "Demo site logo in vector form"),
        ("/static/spacer.gif", "spacer image for layout"),
        ("/img/thumb-small.jpg", "ok"),
        ("/img/no-alt.jpg", None),
    ]


def _page_images(page: dict) -> list[tuple[str, str | None]]:
    url = page["url"]
    imgs = [(_written_src(u, url, i), alt) for i, (u, alt) in enumerate(page.get("images", []))]
    return imgs + _junk(url)


def _html(page: dict, images: list[tuple[str, str | None]]) -> bytes:
    title = html.escape(page.get("title") or f"Demo page {page['url']}")
    parts = [
        f'<!DOCTYPE html>\n<html lang="{html.escape(page.get("lang") or "en")}"><head>'
        '<meta charset="utf-8">',
        f"<title>{title}</title></head>\n<body>\n<h1>{title}</h1>\n",
    ]
    for src, alt in images:
        alt_attr = "" if alt is None else f' alt="{html.escape(alt, quote=True)}"'
        parts.append(f'<figure><img src="{html.escape(src, quote=True)}"{alt_attr}></figure>\n')
    for href, text in page.get("links", []):
        parts.append(f'<p><a href="{html.escape(href, quote=True)}">{html.escape(text)}</a></p>\n')
    if page.get("license"):
        lic = html.escape(page["license"], quote=True)
        parts.append(
            f'<footer><a rel="license" href="{lic}">Creative Commons license</a></footer>\n'
        )
    parts.append("</body></html>\n")
    return "".join(parts).encode("utf-8")


def write_synthetic_crawl(
    out_dir: str, pages: list[dict], crawl_id: str = "CC-MAIN-DEMO"
) -> dict[str, str]:
    """Write `<crawl_id>-00000.warc.gz` and `.warc.wat.gz` under out_dir; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    base = f"{crawl_id}-00000"
    warc_name, wat_name = f"{base}.warc.gz", f"{base}.warc.wat.gz"
    warc_path, wat_path = os.path.join(out_dir, warc_name), os.path.join(out_dir, wat_name)
    date = datetime(2024, 5, 18, 1, 58, 10, tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    info_id = _uuid(crawl_id, "warcinfo")
    wat_records: list[bytes] = []

    with open(warc_path, "wb") as warc:
        info = (
            f"isPartOf: {crawl_id}\r\npublisher: laion_spark demo\r\n"
            "format: WARC File Format 1.0\r\n"
        ).encode()
        warc.write(
            _member(
                _warc_record(
                    [
                        ("WARC-Type", "warcinfo"),
                        ("WARC-Date", date),
                        ("WARC-Record-ID", info_id),
                        ("Content-Type", "application/warc-fields"),
                        ("WARC-Filename", warc_name),
                    ],
                    info,
                )
            )
        )
        for n, page in enumerate(pages):
            url = page["url"]
            host = urlsplit(url).netloc
            images = _page_images(page)
            body = _html(page, images)
            req_id, resp_id = (
                _uuid(crawl_id, url, str(n), "req"),
                _uuid(crawl_id, url, str(n), "resp"),
            )
            path = urlsplit(url).path or "/"
            req_block = (
                f"GET {path} HTTP/1.1\r\nUser-Agent: laion_spark-demo\r\nHost: {host}\r\n\r\n"
            ).encode()
            resp_head = (
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            for rtype, rid, block, ctype in (
                ("request", req_id, req_block, "application/http; msgtype=request"),
                ("response", resp_id, resp_head + body, "application/http; msgtype=response"),
            ):
                offset = warc.tell()
                hdrs = [
                    ("WARC-Type", rtype),
                    ("WARC-Date", date),
                    ("WARC-Record-ID", rid),
                    ("Content-Type", ctype),
                    ("WARC-Warcinfo-ID", info_id),
                    ("WARC-Target-URI", url),
                ]
                if rtype == "response":
                    hdrs.append(("WARC-Identified-Payload-Type", "text/html"))
                member = _member(_warc_record(hdrs, block))
                warc.write(member)
                wat_records.append(
                    _wat_json(
                        warc_name, offset, len(member), rtype, rid, url, date, page, images, body
                    )
                )

    with open(wat_path, "wb") as wat:
        wat.write(
            _member(
                _warc_record(
                    [
                        ("WARC-Type", "warcinfo"),
                        ("WARC-Date", date),
                        ("WARC-Record-ID", _uuid(crawl_id, "wat-warcinfo")),
                        ("Content-Type", "application/warc-fields"),
                        ("WARC-Filename", wat_name),
                    ],
                    f"isPartOf: {crawl_id}\r\nSoftware-Info: laion_spark.demo.crawl\r\n".encode(),
                )
            )
        )
        for rec in wat_records:
            wat.write(_member(rec))
    return {"warc": warc_path, "wat": wat_path}


def _wat_json(
    warc_name: str,
    offset: int,
    length: int,
    rtype: str,
    rid: str,
    url: str,
    date: str,
    page: dict,
    images: list[tuple[str, str | None]],
    body: bytes,
) -> bytes:
    """One WAT metadata record for a WARC request/response, in Common Crawl's layout."""
    header_meta = {
        "WARC-Type": rtype,
        "WARC-Date": date,
        "WARC-Record-ID": rid,
        "WARC-Target-URI": url,
    }
    if rtype == "request":
        payload = {
            "Actual-Content-Type": "application/http; msgtype=request",
            "HTTP-Request-Metadata": {
                "Request-Message": {
                    "Method": "GET",
                    "Path": urlsplit(url).path or "/",
                    "Version": "HTTP/1.1",
                },
                "Headers": {"Host": urlsplit(url).netloc},
            },
        }
    else:
        links: list[dict] = []
        # written as Maven Central's webarchive-commons writes a WAT: attribute values as in
        # the HTML source, entities included (Common Crawl's own generator decodes them since
        # CC-MAIN-2019-26); extract.wat_entities=auto detects this file as raw and decodes once
        for src, alt in images:
            link = {"path": "IMG@/src", "url": html.escape(src, quote=True)}
            if alt is not None:
                link["alt"] = html.escape(alt, quote=True)
            links.append(link)
        for href, text in page.get("links", []):
            links.append({"path": "A@/href", "url": html.escape(href, quote=True), "text": text})
        if page.get("license"):
            links.append(
                {
                    "path": "A@/href",
                    "url": html.escape(page["license"], quote=True),
                    "rel": "license",
                    "text": "Creative Commons license",
                }
            )
        payload = {
            "Actual-Content-Type": "application/http; msgtype=response",
            "HTTP-Response-Metadata": {
                "Response-Message": {"Version": "HTTP/1.1", "Status": "200", "Reason": "OK"},
                "Headers": {
                    "Content-Type": "text/html; charset=utf-8",
                    "Content-Length": str(len(body)),
                },
                "Entity-Length": str(len(body)),
                "HTML-Metadata": {
                    "Head": {
                        "Title": page.get("title") or f"Demo page {url}",
                        "Metas": [{"charset": "utf-8"}],
                    },
                    "Links": links,
                },
            },
        }
    doc = {
        "Container": {
            "Filename": warc_name,
            "Compressed": True,
            "Offset": str(offset),
            "Gzip-Metadata": {"Deflate-Length": str(length)},
        },
        "Envelope": {
            "Format": "WARC",
            "WARC-Header-Metadata": header_meta,
            "Payload-Metadata": payload,
        },
    }
    block = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return _warc_record(
        [
            ("WARC-Type", "metadata"),
            ("WARC-Target-URI", url),
            ("WARC-Date", date),
            ("WARC-Record-ID", _uuid(rid, "wat")),
            ("WARC-Refers-To", rid),
            ("Content-Type", "application/json"),
        ],
        block,
    )

"""Extract rules and parsers, without Spark: the real Common Crawl record, WAT == WARC on
a synthetic crawl, bad input, and fuzzing of both parsers."""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from shared_data import WHIRLWIND_WARC, WHIRLWIND_WAT

from laion_spark.demo.crawl import write_synthetic_crawl
from laion_spark.extract import captions, language, urls
from laion_spark.extract.html import HtmlError, decode_html, parse_html
from laion_spark.extract.license import cc_license, page_license
from laion_spark.extract.pairs import Page, Rules, judge_image, page_pairs
from laion_spark.extract.reader import extract_file
from laion_spark.extract.wat import WatError, parse_wat_json

WARC = str(WHIRLWIND_WARC)
WAT = str(WHIRLWIND_WAT)
PAGE = "https://an.wikipedia.org/wiki/Escopete"
UP = "https://upload.wikimedia.org/wikipedia/commons/thumb"

# worked out by reading the page's 13 <img> tags (see docs/extract.md)
WHIRLWIND_PAIRS = [
    (
        f"{UP}/0/0a/Escudo_de_Escopete_%28Guadalajara%29.svg/70px-Escudo_de_Escopete_%28Guadalajara%29.svg.png",
        "Escudo d'armas",  # alt="Escudo d&#39;armas"
    ),
    (
        f"{UP}/9/9c/Castilla-La_Mancha-loc.svg/250px-Castilla-La_Mancha-loc.svg.png",
        "Escopete ubicada en Castiella-La Mancha",
    ),
    (f"{UP}/d/d2/Map_pointer.svg/12px-Map_pointer.svg.png", "Escopete"),
    ("https://an.wikipedia.org/static/images/footer/wikimedia-button.png", "Wikimedia Foundation"),
    (
        "https://an.wikipedia.org/static/images/footer/poweredby_mediawiki_88x31.png",
        "Powered by MediaWiki",
    ),
]
WHIRLWIND_REJECTED = [
    ("/static/images/icons/wikipedia.png", "no_alt"),  # alt=""
    ("/static/images/mobile/copyright/wikipedia-wordmark-an.svg", "bad_extension"),
    ("/static/images/mobile/copyright/wikipedia-tagline-an.svg", "bad_extension"),
    (
        "//upload.wikimedia.org/wikipedia/commons/thumb/3/37/Translate_icon.svg/35px-Translate_icon.svg.png",
        "no_alt",
    ),
    (
        "//upload.wikimedia.org/wikipedia/commons/thumb/a/aa/Iglesia_de_Nuestra_Se%C3%B1ora_de_la_Asunci%C3%B3n._Escopete_%28Guadalajara%29.jpg/250px-Iglesia_de_Nuestra_Se%C3%B1ora_de_la_Asunci%C3%B3n._Escopete_%28Guadalajara%29.jpg",
        "no_alt",
    ),
    (
        "//upload.wikimedia.org/wikipedia/commons/thumb/9/9a/Flag_of_Spain.svg/18px-Flag_of_Spain.svg.png",
        "no_alt",
    ),
    (
        "//upload.wikimedia.org/wikipedia/commons/thumb/d/d4/Bandera_Castilla-La_Mancha.svg/18px-Bandera_Castilla-La_Mancha.svg.png",
        "no_alt",
    ),
    (
        "https://login.wikimedia.org/wiki/Special:CentralAutoLogin/start?type=1x1",
        "no_alt",
    ),  # alt=""
]


def _whirlwind_page(use_srcset: bool = False) -> Page:
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    with open(WARC, "rb") as f:
        for r in ArchiveIterator(f, record_types=WarcRecordType.response):
            return parse_html(
                r.reader.read(), r.headers.get("WARC-Target-URI"), r.http_charset, use_srcset
            )
    raise AssertionError("no response record")


def test_whirlwind_warc_exact_pairs():
    pairs, stats = extract_file(WARC)
    assert [(p.url, p.text) for p, _ in pairs] == WHIRLWIND_PAIRS
    assert {p.page_url for p, _ in pairs} == {PAGE}
    assert {p.license for p, _ in pairs} == {"cc-by-sa-4.0"}  # the page's footer link
    assert {off for _, off in pairs} == {1023}  # byte offset of the response record
    assert stats.records == 3 and stats.pages == 1 and stats.pairs == 5
    assert dict(stats.rejected) == {"no_alt": 6, "bad_extension": 2}
    assert stats.errors == {} and stats.status == "ok"
    assert stats.crawl_id == "CC-MAIN-2024-22"  # from the warcinfo record (isPartOf)
    # Powered by MediaWiki is confidently English; the rest are short/ambiguous
    pw = next(p for p, _ in pairs if p.text == "Powered by MediaWiki")
    assert pw.language == "en" and pw.language_group == "en" and 0.5 < pw.language_score <= 1.0


def test_whirlwind_rejections_with_reasons():
    page = _whirlwind_page()
    assert len(page.images) == 13 and page.base_href is None
    base = urls.resolve_base(page.url, page.base_href)
    verdicts = [(src, judge_image(src, alt, base, Rules())) for src, alt in page.images]
    rejected = [(src, why) for src, (_, _, why) in verdicts if why]
    kept = [(u, t) for _, (u, t, why) in verdicts if not why]
    assert rejected == WHIRLWIND_REJECTED
    assert kept == WHIRLWIND_PAIRS


def test_whirlwind_last_segment_rule_keeps_wikimedia_png_thumbnails():
    # LAION's substring test (".svg" anywhere in the URL) would drop 3 of the 5 pairs
    laion_kept = [u for u, _ in WHIRLWIND_PAIRS if ".svg" not in u and ".gif" not in u]
    assert len(laion_kept) == 2
    assert urls.url_extension(WHIRLWIND_PAIRS[0][0]) == "png"


def test_whirlwind_srcset_option_takes_largest_candidate():
    page = _whirlwind_page(use_srcset=True)
    c = Counter()
    got = [(p.url, p.text) for p in page_pairs(page, Rules(use_srcset=True), c)]
    assert got[0] == (
        f"{UP}/0/0a/Escudo_de_Escopete_%28Guadalajara%29.svg/140px-Escudo_de_Escopete_%28Guadalajara%29.svg.png",
        "Escudo d'armas",
    )
    assert got[3] == (
        "https://an.wikipedia.org/static/images/footer/wikimedia-button-2x.png",
        "Wikimedia Foundation",
    )


def test_whirlwind_wat_has_only_a_request_record():
    # the public whirlwind WAT holds the request's metadata record only: no HTML-Metadata
    pairs, stats = extract_file(WAT)
    assert pairs == [] and stats.records == 2 and stats.pages == 0 and stats.errors == {}


def _pages(n: int = 12) -> list[dict]:
    pages = []
    for k in range(n):
        imgs = [
            (
                f"http://127.0.0.1:8765/img/{k * 4 + i}.jpg",
                f"A blue square number {k * 4 + i} & friends",
            )
            for i in range(4)
        ]
        imgs.append(("https://images.example.org/a b/ü.png?x=1&y=2", "Über ein schönes Bild <3"))
        imgs.append(
            (f"http://127.0.0.1:8765/img/{k * 4}.jpg", f"A blue square number {k * 4} & friends")
        )  # dup
        pages.append(
            {
                "url": f"http://127.0.0.1:8765/site/page/{k}.html",
                "images": imgs,
                "license": "https://creativecommons.org/licenses/by-nc/4.0/" if k % 2 else None,
            }
        )
    return pages


def test_synthetic_crawl_wat_and_warc_give_the_same_pairs(tmp_path):
    paths = write_synthetic_crawl(str(tmp_path), _pages())
    warc_pairs, warc_stats = extract_file(paths["warc"])
    wat_pairs, wat_stats = extract_file(paths["wat"])
    assert [p for p, _ in warc_pairs] == [p for p, _ in wat_pairs]
    assert len(warc_pairs) == 12 * 5
    assert warc_stats.rejected == wat_stats.rejected
    assert dict(warc_stats.rejected) == {
        "data_url": 12,
        "bad_extension": 24,
        "caption_too_short": 12,
        "no_alt": 12,
        "duplicate_in_page": 12,
    }
    first = warc_pairs[0][0]
    assert first.url == "http://127.0.0.1:8765/img/0.jpg"
    assert first.text == "A blue square number 0 & friends"
    # root-relative (/img/1.jpg) and path-relative (../../img/2.jpg) both resolve
    assert [p.url for p, _ in warc_pairs[1:3]] == [
        "http://127.0.0.1:8765/img/1.jpg",
        "http://127.0.0.1:8765/img/2.jpg",
    ]
    other = warc_pairs[4][0]
    assert other.url == "https://images.example.org/a%20b/%C3%BC.png?x=1&y=2"
    assert other.text == "Über ein schönes Bild <3" and other.language == "de"
    assert {p.license for p, _ in warc_pairs if "/page/1." in p.page_url} == {"cc-by-nc-4.0"}
    assert {p.license for p, _ in warc_pairs if "/page/0." in p.page_url} == {None}
    assert warc_stats.crawl_id == wat_stats.crawl_id == "CC-MAIN-DEMO"


def test_url_rules():
    base = "https://Example.COM:443/a/b/page.html"
    r = lambda s, **kw: urls.resolve_image_url(s, base, 2048, frozenset({"svg", "gif"}), **kw)  # noqa: E731
    assert r("../img/x.jpg#frag") == ("https://example.com/a/img/x.jpg", None)
    assert r("//CDN.example.com:80/x.png") == ("https://cdn.example.com:80/x.png", None)
    assert r("http://cdn.example.com:80/x.png") == ("http://cdn.example.com/x.png", None)
    assert r(" \n/x\t.jpg ") == ("https://example.com/x.jpg", None)
    assert r("data:image/png;base64,AAAA") == (None, "data_url")
    assert r("JavaScript:alert(1)") == (None, "javascript_url")
    assert r("ftp://example.com/x.jpg") == (None, "bad_scheme")
    assert r("") == (None, "empty_url")
    assert r(None) == (None, "empty_url")
    assert r("http:///nohost.jpg") == (None, "invalid_url")
    assert r("http://example.com:99999/x.jpg") == (None, "invalid_url")
    assert r("/logo.SVG") == (None, "bad_extension")
    assert r("/anim.gif?w=10") == (None, "bad_extension")
    assert (
        r("/thumb/Flag.svg/18px-Flag.svg.png")[0]
        == "https://example.com/thumb/Flag.svg/18px-Flag.svg.png"
    )
    assert r("/svg-or-gif/x.jpeg")[1] is None
    assert urls.resolve_image_url("/" + "a" * 3000, base, 2048) == (None, "url_too_long")
    assert (
        urls.resolve_image_url("http://bücher.de/x.jpg", base)[0] == "http://xn--bcher-kva.de/x.jpg"
    )
    assert (
        urls.resolve_base(base, "https://static.example.net/root/")
        == "https://static.example.net/root/"
    )
    assert urls.resolve_base(base, "javascript:x") == base
    assert urls.largest_srcset("a.jpg 320w, b.jpg 1024w, c.jpg 640w") == "b.jpg"
    assert urls.largest_srcset("a.jpg, b.jpg 2x") == "b.jpg"


def test_base_href_is_respected():
    html = b'<html><head><base href="https://cdn.example.org/media/"></head><body><img src="cat.jpg" alt="A sleeping cat"></body></html>'
    page = parse_html(html, "https://example.org/blog/post")
    pairs = list(page_pairs(page, Rules(), Counter()))
    assert [p.url for p in pairs] == ["https://cdn.example.org/media/cat.jpg"]


def test_caption_rules():
    c = captions.clean_caption
    assert c("  A  red\n\tcircle  ") == ("A red circle", None)
    assert c("Ã©tÃ© en France") == ("été en France", None)  # mojibake repaired by ftfy
    assert c("zero\u200bwidth\x07bell text") == ("zerowidth bell text", None)
    assert c("abcd") == (None, "caption_too_short")
    assert c("   ") == (None, "no_alt")
    assert c(None) == (None, "no_alt")
    assert c("x" * 2001) == (None, "caption_too_long")
    assert c("x" * 100_000) == (None, "caption_too_long")
    assert c("abcd", min_chars=3) == ("abcd", None)
    # a caption is text: entities were decoded where the attribute was read, never here
    assert c("Tom &amp; Jerry") == ("Tom &amp; Jerry", None)
    assert c("Caf&eacute; &amp;amp; Bar é") == ("Caf&eacute; &amp;amp; Bar é", None)


def test_language_groups():
    code, score = language.detect("The quick brown fox jumps over the lazy dog near the river")
    assert code == "en" and score > 0.5
    assert language.detect("Der schnelle braune Fuchs springt über den faulen Hund")[0] == "de"
    assert language.detect("") == (None, 0.0)
    assert language.language_group("en", 0.9, 0.25) == "en"
    assert language.language_group("fr", 0.9, 0.25) == "multi"
    assert language.language_group("fr", 0.1, 0.25) == "nolang"
    assert language.language_group(None, 0.0, 0.25) == "nolang"


def test_license_detection():
    assert cc_license("https://creativecommons.org/licenses/by-sa/4.0/deed.an") == "cc-by-sa-4.0"
    assert cc_license("//creativecommons.org/licenses/by-nc-nd/3.0/") == "cc-by-nc-nd-3.0"
    assert cc_license("https://creativecommons.org/publicdomain/zero/1.0/") == "cc0-1.0"
    assert cc_license("https://creativecommons.org/publicdomain/mark/1.0/") == "pdm-1.0"
    assert cc_license("https://creativecommons.org/about/") is None
    assert cc_license("https://example.com/licenses/by/4.0") is None
    links = [
        ("https://creativecommons.org/licenses/by/2.0/", None),
        ("https://creativecommons.org/licenses/by-sa/3.0/", "license"),
    ]
    assert page_license(links) == "cc-by-sa-3.0"


def test_wat_parser_shapes():
    with pytest.raises(WatError) as e:
        parse_wat_json(b'{"Envelope": ')
    assert e.value.reason == "invalid_json"
    with pytest.raises(WatError) as e:
        parse_wat_json(b"[1, 2]")
    assert e.value.reason == "bad_wat_shape"
    assert parse_wat_json(b'{"Envelope": {"Payload-Metadata": {}}}') is None
    doc = {
        "Envelope": {
            "WARC-Header-Metadata": {"WARC-Target-URI": "http://a.example/p/"},
            "Payload-Metadata": {
                "HTTP-Response-Metadata": {
                    "HTML-Metadata": {
                        "Head": {"Base": "http://b.example/"},
                        "Links": [
                            {"path": "IMG@/src", "url": "x.jpg", "alt": "Tom &amp; Jerry"},
                            {"path": "A@/href", "url": "http://a.example/next"},
                            "junk",
                            {"path": 3},
                        ],
                    }
                }
            },
        }
    }
    page = parse_wat_json(json.dumps(doc))
    assert page.url == "http://a.example/p/" and page.base_href == "http://b.example/"
    assert page.images == [("x.jpg", "Tom & Jerry")]


def test_html_decoding():
    assert decode_html("café".encode("latin-1"), "iso-8859-1") == "café"
    assert decode_html(b'<meta charset="windows-1252"><p>caf\xe9').endswith("café")
    with pytest.raises(HtmlError) as e:
        decode_html(os.urandom(1) * 0 + bytes(range(256)) * 40)
    assert e.value.reason == "undecodable_html"


# ---------------------------------------------------------------- bad input files


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _record(rtype: str, block: bytes, extra: str = "", ctype: str = "application/json") -> bytes:
    head = (
        f"WARC/1.0\r\nWARC-Type: {rtype}\r\nWARC-Record-ID: <urn:uuid:{os.urandom(4).hex()}>\r\n"
        f"WARC-Target-URI: http://bad.example/p\r\nContent-Type: {ctype}\r\n{extra}"
        f"Content-Length: {len(block)}\r\n\r\n"
    )
    return head.encode() + block + b"\r\n\r\n"


def test_bad_wat_file_keeps_good_records(tmp_path):
    paths = write_synthetic_crawl(str(tmp_path / "good"), _pages(2))
    good = open(paths["wat"], "rb").read()
    bad = (
        _gz(_record("metadata", b'{"Envelope": {"Payload-Metadata": "IMG@ oops'))  # invalid JSON
        + _gz(_record("metadata", b'"IMG@" ' + b"x" * 9000))  # too large for the limit below
    )
    data = good + bad + good + good[:-40]  # a third copy cut in the middle of its last gzip member
    path = tmp_path / "bad.warc.wat.gz"
    path.write_bytes(data)
    pairs, stats = extract_file(str(path), {"max_wat_record_bytes": 8000})
    good_pairs, _ = extract_file(paths["wat"])
    n = len(good_pairs)
    assert n == 10
    # both full copies extracted, the cut copy up to its broken last record
    assert len(pairs) == 3 * n - 5
    assert stats.errors["invalid_json"] == 1
    assert stats.errors["record_too_large"] == 1
    assert stats.errors.get("truncated_record", 0) + stats.errors.get("stream_error", 0) >= 1
    assert stats.status == "partial" and stats.error_message


def test_bad_warc_file_garbage_and_huge_page(tmp_path):
    body = (
        b"<html><body>"
        + b"<p>filler</p>" * 1000
        + b'<img src="/a.jpg" alt="A picture of a dog"></body></html>'
    )
    http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n"
    binary = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n" + bytes(range(256)) * 10
    ok = _record(
        "response",
        http + b'<img src="/ok.jpg" alt="A fine picture">',
        ctype="application/http; msgtype=response",
    )
    ok2 = _record(
        "response",
        http + b'<img src="/ok2.jpg" alt="A fine picture">',
        ctype="application/http; msgtype=response",
    )
    data = (
        _gz(ok)
        + _gz(_record("response", http + body, ctype="application/http; msgtype=response"))
        + _gz(_record("response", binary, ctype="application/http; msgtype=response"))
        + _gz(ok2)
        + b"\x00garbage that is not gzip" * 10
    )
    path = tmp_path / "bad.warc.gz"
    path.write_bytes(data)
    pairs, stats = extract_file(str(path), {"max_page_bytes": 5000})
    assert [p.url for p, _ in pairs] == ["http://bad.example/ok.jpg", "http://bad.example/ok2.jpg"]
    assert stats.errors["page_too_large"] == 1
    assert stats.errors["undecodable_html"] == 1
    assert stats.errors["stream_error"] == 1
    assert stats.bad_records == 3 and stats.status == "partial"


def test_missing_file_is_a_failed_stats_row():
    pairs, stats = extract_file("/nonexistent/x.warc.wat.gz")
    assert pairs == [] and stats.status == "failed" and stats.errors == {"open_failed": 1}


# ---------------------------------------------------------------- fuzzing

_FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=30))
_json = st.recursive(
    _json_leaf,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=12), kids, max_size=4)
    ),
    max_leaves=25,
)
_link = st.fixed_dictionaries(
    {
        "path": st.sampled_from(["IMG@/src", "A@/href", "BASE@/href", "LINK@/href", 7]),
        "url": st.one_of(st.text(max_size=60), st.integers(), st.none()),
        "alt": st.one_of(st.text(max_size=60), st.none(), st.lists(st.integers())),
    }
)


def _wat_doc(links, head):
    return {
        "Envelope": {
            "WARC-Header-Metadata": {"WARC-Target-URI": "http://fuzz.example/a/b"},
            "Payload-Metadata": {
                "HTTP-Response-Metadata": {"HTML-Metadata": {"Head": head, "Links": links}}
            },
        }
    }


@_FUZZ
@given(st.lists(_link, max_size=8), _json)
def test_fuzz_wat_parser_structured(links, head):
    try:
        page = parse_wat_json(json.dumps(_wat_doc(links, head)))
    except WatError:
        return
    if page is not None:
        list(page_pairs(page, Rules(), Counter()))


@_FUZZ
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=399))
def test_fuzz_wat_parser_mutated_bytes(noise, cut):
    doc = json.dumps(
        _wat_doc([{"path": "IMG@/src", "url": "/x.jpg", "alt": "A fuzzed image"}], {})
    ).encode()
    data = doc[: cut % len(doc)] + noise + doc[cut % len(doc) :]
    try:
        page = parse_wat_json(data)
    except WatError:
        return
    if page is not None:
        list(page_pairs(page, Rules(), Counter()))


_tag = st.sampled_from(
    [
        "<img",
        "<img src=",
        "<base href=",
        "<a rel=license href=",
        "alt=",
        "srcset=",
        '"',
        "'",
        ">",
        "</",
        "<!--",
        "&amp;",
        "&#",
        "data:",
        "//",
        "creativecommons.org/licenses/by/4.0",
        "\x00",
        "\ufffd",
        " ",
    ]
)


@_FUZZ
@given(st.lists(st.one_of(_tag, st.text(max_size=12)), max_size=60), st.booleans())
def test_fuzz_html_parser(parts, srcset):
    text = "".join(parts)
    for body in (text, text.encode("utf-8", "surrogatepass")):
        try:
            page = parse_html(body, "http://fuzz.example/dir/page.html", None, srcset)
        except HtmlError:
            continue
        list(page_pairs(page, Rules(use_srcset=srcset), Counter()))


_url_part = st.sampled_from(
    [
        "http://",
        "https://",
        "HTTP://",
        "//",
        "/",
        "../",
        "./",
        "?",
        "#",
        "@",
        ":",
        ":80",
        ":443",
        ":8080",
        ":99999",
        "[::1]",
        "Ex.COM",
        "bücher.de",
        "a b",
        "%41",
        "ü",
        "x.jpg",
        "y.SVG",
        ".",
        "&",
        "=",
    ]
)


@_FUZZ
@given(st.lists(st.one_of(_url_part, st.text(max_size=6)), max_size=10))
@example(["http://", ":", "@", "http://"])  # empty user and password
@example(["http://u:@h.example/x.jpg"])  # empty password
@example(["http://:p@h.example/x.jpg"])  # empty user
def test_fuzz_url_resolution_is_normalised(parts):
    from laion_spark.ids import normalize_url, sample_id

    raw = "".join(parts)
    for base in ("https://Page.example:443/dir/p.html", "http://[::1]:8080/a/"):
        url, why = urls.resolve_image_url(raw, base, 2048, frozenset({"svg"}))
        assert (url is None) != (why is None)
        if url is not None:
            # the fast path equals the reference normalisation, so the ids agree
            assert normalize_url(url) == url
            page = Page(url=base, images=[(raw, "A caption for the fuzzed URL")])
            (pair,) = list(page_pairs(page, Rules(language_id=False), Counter()))
            assert pair.sample_id == sample_id(url, "A caption for the fuzzed URL")


_rel = st.lists(
    st.sampled_from(
        [
            "/",
            "//",
            ".",
            "..",
            "a",
            "b.jpg",
            "?",
            "#",
            ":",
            "x:y",
            "%20",
            " ",
            "\\\\",
            "h.example",
            "@",
            ";p",
        ]
    ),
    max_size=8,
)


@_FUZZ
@given(
    _rel,
    st.sampled_from(
        [
            "http://h.example/a/b/page.html?q=1",
            "https://h.example",
            "http://h.example/",
            "https://u@h.example:8443/x/./y/z",
            "http://h.example/dir/",
        ]
    ),
)
def test_fuzz_fast_join_equals_urljoin(parts, base):
    from urllib.parse import urljoin

    raw = "".join(parts)
    try:
        ref = urljoin(base, raw)
    except ValueError:
        return

    def norm(u):
        try:
            return urls._normalize(u)
        except (ValueError, UnicodeError):
            return "invalid"

    # equal after normalisation (urljoin drops an empty "?", which normalising drops too)
    assert norm(urls.join_url(base, raw)) == norm(ref)

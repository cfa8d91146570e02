"""Extract on real-world input: one entity rule for WARC and WAT (written decoded, as Common
Crawl's generator does since CC-MAIN-2019-26, and raw), one HTTP status rule, bracketed
WARC-Target-URIs, ARC files, wrong Content-Lengths, and a run with nothing to read."""

from __future__ import annotations

import gzip
import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from selectolax.lexbor import LexborHTMLParser
from shared_data import WHIRLWIND_WAT

from laion_spark.extract import captions
from laion_spark.extract.entities import unescape_attribute, wat_values_decoded
from laion_spark.extract.reader import extract_file
from laion_spark.ids import sample_id

SHOP = "http://shop.example/dir/page.html"
# attribute values exactly as written in the pages' HTML (what a raw WAT keeps)
PAGES = [
    {
        "url": SHOP,
        "images": [
            ("/img/a.jpg", "image (&quot;&amp;amp;&quot;)"),  # the example
            ("/img/b.jpg?x=1&amp;y=2", "Caf&eacute; &amp;amp; Bar"),  # non-ASCII caption path
            ("/img/c.jpg?a=1&copy=2", "Tom &amp; Jerry &#39;s show"),  # '&copy=' stays as is
            ("http://cdn.example/d.jpg", "Ni&ntilde;os &amp Co &nbsp;x"),  # '&amp' without ';'
            ("/img/e.jpg?q=&lt;b&gt;", "&#x48;ello &#128; and &#0; &notit; &AMP;"),
            ("/img/f.jpg", "Über &lt;3 café au lait"),
            ("/img/g.jpg", "plain ascii caption"),
        ],
    },
    {
        # <base href> with a reference in it, and a status line the rules accept
        "url": "http://other.example/a/b.html",
        "base": "http://cdn.example/x&amp;y/",
        "images": [("rel/h.jpg", "A base&#45;relative image"), ("../i.png", "Going up one")],
    },
    {
        # WARC 1.0's bracketed target URI: relative sources still resolve
        "url": "<http://brackets.example/p/q.html>",
        "images": [("r.jpg", "A relative source here"), ("/s.jpg", "A root relative one")],
    },
    {
        "url": "http://gone.example/404.html",
        "status": 404,
        "images": [("/x.jpg", "A picture on a missing page")],
    },
    {"url": "http://gone.example/500.html", "status": 500, "images": []},
    {
        "url": "http://moved.example/301.html",
        "status": 301,
        "images": [("/y.jpg", "Moved page pic")],
    },
]

CC_2024 = (
    "CC-MAIN-20240517233122-20240518023122-00000.warc.wat.gz",
    "Software-Info: ia-web-commons.1.1.10-SNAPSHOT-20240513074037\r\n",
)
CC_2018 = (
    "CC-MAIN-20180917100000-20180917120000-00000.warc.wat.gz",
    "Software-Info: ia-web-commons.1.0-SNAPSHOT-20180801120000\r\n",
)
OWN_CRAWL = ("mycrawl-00000.warc.wat.gz", "Software-Info: ia-web-commons.1.1.9-20190115093812\r\n")


def _record(headers: list[tuple[str, str]], block: bytes, length: int | None = None) -> bytes:
    n = len(block) if length is None else length
    head = "WARC/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    return (head + f"Content-Length: {n}\r\n\r\n").encode() + block + b"\r\n\r\n"


def _html(page: dict) -> bytes:
    base = f'<base href="{page["base"]}">' if page.get("base") else ""
    imgs = "".join(f'<img src="{s}" alt="{a}">' for s, a in page["images"])
    return f"<html><head>{base}</head><body>{imgs}</body></html>".encode()


def _response(page: dict, length_delta: int = 0) -> bytes:
    status = page.get("status", 200)
    body = _html(page)
    http = f"HTTP/1.1 {status} X\r\nContent-Type: text/html; charset=utf-8\r\n\r\n".encode()
    block = http + body
    return _record(
        [
            ("WARC-Type", "response"),
            ("WARC-Target-URI", page["url"]),
            ("Content-Type", "application/http; msgtype=response"),
        ],
        block,
        len(block) + length_delta,
    )


def write_warc(path, pages: list[dict], gz: bool = True, bad: dict | None = None) -> str:
    """A WARC (one gzip member per record, or plain); `bad`: {page index: Content-Length
    error} to write a wrong length."""
    info = _record(
        [("WARC-Type", "warcinfo"), ("Content-Type", "application/warc-fields")],
        b"isPartOf: CC-MAIN-TEST\r\n",
    )
    recs = [info] + [_response(p, (bad or {}).get(i, 0)) for i, p in enumerate(pages)]
    path.write_bytes(b"".join(gzip.compress(r, mtime=0) for r in recs) if gz else b"".join(recs))
    return str(path)


def _lexbor_values(page: dict) -> tuple[str | None, list[tuple[str, str]]]:
    """The page's attribute values as an HTML5 parser decodes them (what Common Crawl's
    generator writes into the WAT since 2019: jsoup's attribute decoding)."""
    tree = LexborHTMLParser(_html(page).decode())
    base = tree.css_first("base")
    imgs = [(n.attributes["src"], n.attributes["alt"]) for n in tree.css("img")]
    return (base.attributes["href"] if base else None), imgs


def write_wat(path, pages: list[dict], decoded: bool, warcinfo: tuple[str, str]) -> str:
    """A WAT in Common Crawl's layout with attribute values decoded (as its generator writes
    them) or raw (as written in the HTML, the Maven Central webarchive-commons)."""
    name, software = warcinfo
    recs = [
        _record(
            [
                ("WARC-Type", "warcinfo"),
                ("WARC-Filename", name),
                ("Content-Type", "application/warc-fields"),
            ],
            software.encode(),
        )
    ]
    for page in pages:
        base, imgs = _lexbor_values(page) if decoded else (page.get("base"), page["images"])
        html_meta: dict = {"Head": {"Base": base} if base else {}, "Links": []}
        html_meta["Links"] = [{"path": "IMG@/src", "url": s, "alt": a} for s, a in imgs]
        status = str(page.get("status", 200))
        doc = {
            "Envelope": {
                "WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Target-URI": page["url"]},
                "Payload-Metadata": {
                    "HTTP-Response-Metadata": {
                        "Response-Message": {"Version": "HTTP/1.1", "Status": status},
                        "HTML-Metadata": html_meta,
                    }
                },
            }
        }
        recs.append(
            _record(
                [
                    ("WARC-Type", "metadata"),
                    ("WARC-Target-URI", page["url"]),
                    ("Content-Type", "application/json"),
                ],
                json.dumps(doc, ensure_ascii=False).encode(),
            )
        )
    path.write_bytes(b"".join(gzip.compress(r, mtime=0) for r in recs))
    return str(path)


def _key(pairs) -> list[tuple]:
    return [(p.sample_id, p.url, p.text, p.page_url, p.language, p.license) for p, _ in pairs]


@pytest.fixture(scope="module")
def warc_pairs(tmp_path_factory):
    path = write_warc(tmp_path_factory.mktemp("warc") / "pages.warc.gz", PAGES)
    pairs, stats = extract_file(path)
    return pairs, stats


def test_warc_decodes_once_from_the_html(warc_pairs):
    pairs, stats = warc_pairs
    got = {p.url: p.text for p, _ in pairs}
    assert got == {
        "http://shop.example/img/a.jpg": 'image ("&amp;")',
        "http://shop.example/img/b.jpg?x=1&y=2": "Café &amp; Bar",  # not "Café & Bar"
        "http://shop.example/img/c.jpg?a=1&copy=2": "Tom & Jerry 's show",
        "http://cdn.example/d.jpg": "Niños & Co x",
        "http://shop.example/img/e.jpg?q=<b>": "Hello € and \ufffd &notit; &",
        "http://shop.example/img/f.jpg": "Über <3 café au lait",
        "http://shop.example/img/g.jpg": "plain ascii caption",
        "http://cdn.example/x&y/rel/h.jpg": "A base-relative image",
        "http://cdn.example/i.png": "Going up one",
        "http://brackets.example/p/r.jpg": "A relative source here",
        "http://brackets.example/s.jpg": "A root relative one",
    }
    assert {p.page_url for p, _ in pairs} == {
        SHOP,
        "http://other.example/a/b.html",
        "http://brackets.example/p/q.html",
    }
    assert all(p.sample_id == sample_id(p.url, p.text) for p, _ in pairs)
    # 404, 500 and 301 pages: one rule, counted per page
    assert stats.rejected["page_http_not_ok"] == 3 and stats.pages == 3
    assert stats.wat_entities is None  # a WARC has no WAT writer to ask


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize(
    "decoded,warcinfo,mode",
    [
        (True, CC_2024, "decoded: Common Crawl segment 20240517233122"),
        (False, CC_2018, "raw: Common Crawl segment 20180917100000"),
        (False, OWN_CRAWL, "raw: not a Common Crawl WAT"),
    ],
)
def test_wat_written_decoded_or_raw_gives_the_warc_pairs(
    tmp_path, warc_pairs, native, decoded, warcinfo, mode
):
    """Same pairs and sample_ids from the WARC and from its WAT, whether the WAT's writer
    decoded the values (Common Crawl since 2019-26) or kept them raw; compiled and Python
    path, ASCII and non-ASCII captions."""
    path = write_wat(tmp_path / "pages.warc.wat.gz", PAGES, decoded, warcinfo)
    pairs, stats = extract_file(path, {"native": native})
    assert _key(pairs) == _key(warc_pairs[0]) and len(pairs) == 11
    assert stats.wat_entities.startswith(mode)
    assert stats.rejected == warc_pairs[1].rejected and stats.pages == warc_pairs[1].pages
    assert stats.errors == {}


@pytest.mark.parametrize("native", [True, False])
def test_the_wrong_entity_rule_would_change_captions(tmp_path, native):
    """The detection matters: reading a decoded WAT as raw decodes twice, a raw one as
    decoded not at all (so this test fails if either path ignored the rule)."""
    dec = write_wat(tmp_path / "d.warc.wat.gz", PAGES[:1], True, CC_2024)
    raw = write_wat(tmp_path / "r.warc.wat.gz", PAGES[:1], False, OWN_CRAWL)
    twice, s1 = extract_file(dec, {"native": native, "wat_entities": "raw"})
    never, s2 = extract_file(raw, {"native": native, "wat_entities": "decoded"})
    assert s1.wat_entities == "raw: extract.wat_entities"
    assert s2.wat_entities == "decoded: extract.wat_entities"
    assert {p.text for p, _ in twice} >= {'image ("&")', "Café & Bar"}
    assert {p.text for p, _ in never} >= {
        "image (&quot;&amp;amp;&quot;)",
        "Tom &amp; Jerry &#39;s show",
    }


def test_non_ascii_caption_path_does_not_decode_again():
    # ftfy's HTML unescaping is off: an entity left in a caption was written double-escaped
    assert captions.clean_caption("Café &amp; Bar") == ("Café &amp; Bar", None)
    assert captions.clean_caption("Tom &amp; Jerry") == ("Tom &amp; Jerry", None)
    assert captions.clean_caption("CafÃ© &amp; Bar") == ("Café &amp; Bar", None)  # mojibake


_ATTR_ALPHABET = st.sampled_from(
    [
        "&",
        "#",
        "x",
        "X",
        ";",
        "=",
        " ",
        "a",
        "Z",
        "0",
        "9",
        "é",
        "amp",
        "lt",
        "copy",
        "not",
        "notin",
        "nbsp",
        "AMP",
        "#39",
        "#x27",
        "#128",
        "#0",
        "#x110000",
        "#99999999999",
        "#xD800",
        "eacute",
        "CounterClockwiseContourIntegral",
        "fjlig",
        "-",
        "_",
        "ampamp",
    ]
)


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_ATTR_ALPHABET, max_size=12))
@example(["&", "amp", "=", "1"])
@example(["&", "copy", " "])
def test_unescape_attribute_equals_an_html5_parser(parts):
    """entities.unescape_attribute decodes a raw WAT value exactly as lexbor decodes the
    attribute on the WARC path (HTML5's rules), on fuzzed reference soup."""
    raw = "".join(parts)
    tree = LexborHTMLParser(f'<img alt="{raw}">')
    assert unescape_attribute(raw) == tree.css_first("img").attributes["alt"]


def test_wat_detection_rules():
    assert wat_values_decoded(None, "/data/x.warc.wat.gz") == (False, "raw: not a Common Crawl WAT")
    info = f"WARC-Filename: {CC_2024[0]}\n{CC_2024[1]}"
    assert wat_values_decoded(info, "/any/path")[0] is True
    info = f"WARC-Filename: {CC_2018[0]}\n{CC_2018[1]}"
    assert wat_values_decoded(info, "/any/path")[0] is False
    # another writer on a Common Crawl file name: its own rule (raw)
    assert (
        wat_values_decoded(f"WARC-Filename: {CC_2024[0]}\nSoftware-Info: mytool 1.0\n", "/p")[0]
        is False
    )
    # no warcinfo: the crawl id in the path
    path = "s3://commoncrawl/crawl-data/CC-MAIN-2019-26/segments/1/wat/x.warc.wat.gz"
    assert wat_values_decoded(None, path)[0] is True
    assert wat_values_decoded(None, path.replace("2019-26", "2019-22"))[0] is False


def test_real_common_crawl_wat_is_detected_as_decoded():
    # the public whirlwind WAT (CC-MAIN-2024-22, written by Common Crawl's generator)
    _, stats = extract_file(str(WHIRLWIND_WAT))
    assert stats.wat_entities.startswith("decoded: Common Crawl segment 20240517233122")


# ---------------------------------------------------------------- broken containers

_ARC = (
    b"filedesc://IA-000001.arc 0.0.0.0 19960923142103 text/plain 76\n"
    b"1 0 Alexa Internet\nURL IP-address Archive-date Content-type Archive-length\n\n"
    b"http://old.example/ 127.0.0.1 19961104142103 text/html 61\n"
    b"HTTP/1.0 200 OK\nContent-Type: text/html\n\n<img src=a.jpg alt=x>\n"
)


@pytest.mark.parametrize("gz", [True, False])
def test_arc_file_is_unsupported_format_with_a_way_out(tmp_path, gz):
    path = tmp_path / ("old.arc.gz" if gz else "old.arc")
    path.write_bytes(gzip.compress(_ARC) if gz else _ARC)
    pairs, stats = extract_file(str(path))
    assert pairs == [] and stats.status == "unsupported_format"
    assert stats.errors == {"unsupported_format": 1} and stats.bad_records == 0
    assert "ARC file" in stats.error_message and "warc convert arc" in stats.error_message


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("delta", [30, -10, 100_000])
def test_wrong_content_length_loses_only_its_record(tmp_path, gz, delta):
    """A record whose Content-Length is too long (it would swallow the records after it,
    here up to the end of the file) or too short: reading resumes at the next record."""
    pages = [
        {"url": f"http://h.example/{i}.html", "images": [(f"/{i}.jpg", f"Picture number {i}")]}
        for i in range(6)
    ]
    good = extract_file(write_warc(tmp_path / "good.warc.gz", pages))[0]
    path = write_warc(tmp_path / ("bad.warc.gz" if gz else "bad.warc"), pages, gz, {2: delta})
    pairs, stats = extract_file(path)
    want = {p.url for p, _ in good}
    got = {p.url for p, _ in pairs}
    # at most the bad record's own pair is lost; every record after it is read
    assert want - got <= {"http://h.example/2.jpg"} and got <= want
    assert {f"http://h.example/{i}.jpg" for i in (3, 4, 5)} <= got
    assert stats.status == "partial" and stats.bad_records >= 1
    assert "resumed at byte" in stats.error_message or "truncated_record" in stats.error_message


def test_corrupt_gzip_member_in_the_middle_resyncs(tmp_path):
    pages = [
        {"url": f"http://h.example/{i}.html", "images": [(f"/{i}.jpg", f"Picture number {i}")]}
        for i in range(4)
    ]
    data = bytearray(open(write_warc(tmp_path / "a.warc.gz", pages), "rb").read())
    members = [i for i in range(len(data)) if data[i : i + 3] == b"\x1f\x8b\x08"]
    start, end = members[2], members[3]  # the member of page 1
    data[start + 20 : end - 10] = b"\x00" * (end - 30 - start)  # its deflate stream zeroed
    path = tmp_path / "b.warc.gz"
    path.write_bytes(bytes(data))
    pairs, stats = extract_file(str(path))
    assert {p.url for p, _ in pairs} == {f"http://h.example/{i}.jpg" for i in (0, 2, 3)}
    assert stats.errors["stream_error"] == 1 and f"resumed at byte {end}" in stats.error_message


def test_wat_entities_setting_is_validated(make_cfg):
    from laion_spark.settings import ConfigError

    assert make_cfg(["extract.wat_entities=raw"]).extract.wat_entities == "raw"
    with pytest.raises(ConfigError, match="extract.wat_entities"):
        make_cfg(["extract.wat_entities=html"])

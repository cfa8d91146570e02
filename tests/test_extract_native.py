"""The compiled WAT extractor (laion_spark_native, built from native/) gives exactly what the
Python path (wat.parse_wat_json + pairs.page_pairs) gives: same pairs, same rejection
counts, and every record it does not handle itself goes back to Python.

The package is imported at module level on purpose: a machine where scripts/setup.sh did
not build it fails here instead of silently testing only the Python path.
"""

from __future__ import annotations

import json
import random
from collections import Counter

import laion_spark_native  # noqa: F401  (a missing build is a failure, not a skip)
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_extract_fast import _alt, _crawl_pages, _raw_src, _whirlwind_page

from laion_spark.demo.crawl import write_synthetic_crawl
from laion_spark.extract.pairs import PageRejected, Rules, page_pairs
from laion_spark.extract.reader import extract_file
from laion_spark.extract.wat import WatError, parse_wat_json
from laion_spark.extract.wat_native import wat_extractor

RULE_SETS = [
    {},
    {"dedup_by_url": True, "max_images_per_page": 5},
    {"min_caption_chars": 1, "drop_extensions": frozenset(), "language_id": False},
    {"min_caption_chars": 0, "max_caption_chars": 12, "max_url_chars": 40},
    {"fix_text": False, "drop_extensions": frozenset({"jpg", "PNG"})},
]


def _python(data: bytes, record_url: str | None, rules: Rules, decoded: bool = False) -> tuple:
    rejected: Counter = Counter()
    try:
        page = parse_wat_json(data, record_url, decoded)
    except WatError as e:
        return ("error", e.reason)
    except PageRejected as e:
        return ("not_html", {e.reason: 1})
    if page is None:
        return ("not_html", {})
    return ("pairs", list(page_pairs(page, rules, rejected, False, "CC-X")), dict(rejected))


def _native(
    data: bytes, record_url: str | None, rules: Rules, decoded: bool = False
) -> tuple | None:
    """The compiled path's result in _python's form; None where it hands the record back."""
    extract = wat_extractor(rules, decoded)
    assert extract is not None
    rejected: Counter = Counter()
    got = extract(data, record_url, "CC-X")
    extract.drain_rejected(rejected)
    if got is None:
        assert not rejected  # a record handed back counted nothing
        return None
    if got is False:
        return ("not_html", dict(rejected))
    return ("pairs", got, dict(rejected))


def _same(
    data: bytes, rules_kw: dict, record_url: str | None = None, decoded: bool = False
) -> bool:
    """Asserts both paths agree on one record (for a WAT written with decoded values or
    raw ones); True when the compiled path handled it."""
    from laion_spark.extract import language

    language._CACHE.clear()
    native = _native(data, record_url, Rules(**rules_kw), decoded)
    python = _python(data, record_url, Rules(**rules_kw, native=False), decoded)  # fastText
    if native is not None:
        assert native == python
    return native is not None


def _wat_doc(page_url: str | None, links: list, head: dict | None = None) -> dict:
    html = {"Head": head or {}, "Links": links}
    env: dict = {"Payload-Metadata": {"HTTP-Response-Metadata": {"HTML-Metadata": html}}}
    if page_url is not None:
        env["WARC-Header-Metadata"] = {"WARC-Target-URI": page_url}
    return {"Envelope": env}


@pytest.mark.parametrize("rules_kw", RULE_SETS)
def test_real_common_crawl_page_same_pairs(rules_kw):
    """The whirlwind record's images (real alts and relative URLs), as a WAT record."""
    page = _whirlwind_page()
    links = [{"path": "IMG@/src", "url": s, "alt": a} for s, a in page.images]
    links += [{"path": "A@/href", "url": "/about"}] * 3
    data = json.dumps(_wat_doc(page.url, links)).encode()
    assert _same(data, rules_kw)
    got = _python(data, None, Rules(**rules_kw, native=False))
    if not rules_kw:  # the default rules keep the record's 5 pairs (as the WARC path does)
        assert len(got[1]) == 5


@pytest.mark.parametrize("rules_kw", RULE_SETS[:3])
def test_synthetic_crawl_file_same_pairs_and_stats(tmp_path, rules_kw):
    paths = write_synthetic_crawl(str(tmp_path), _crawl_pages(60))
    opts = {k: sorted(v) if isinstance(v, frozenset) else v for k, v in rules_kw.items()}
    from laion_spark.extract import language

    language._CACHE.clear()  # each run computes its own language ids
    native, native_stats = extract_file(paths["wat"], dict(opts, native=True))
    language._CACHE.clear()
    python, python_stats = extract_file(paths["wat"], dict(opts, native=False))
    assert native == python and len(native) > 100
    a, b = native_stats.as_dict(), python_stats.as_dict()
    a.pop("seconds"), b.pop("seconds")
    assert a == b
    # and it really was the compiled path: every page record of this file is a plain shape
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    with open(paths["wat"], "rb") as f:
        for r in ArchiveIterator(f, record_types=WarcRecordType.metadata):
            data = r.reader.read()
            if b'"IMG@' in data:
                assert _native(data, None, Rules()) is not None


def test_license_base_href_and_entities():
    links = [
        {"path": "A@/href", "url": "https://CreativeCommons.org/licenses/by-sa/4.0/"},
        {
            "path": "A@/href",
            "url": "https://creativecommons.org/licenses/by/2.0/",
            "rel": "license",
        },
        {"path": "BASE@/href", "url": "http://cdn.example/base/&amp;x/"},
        {"path": "IMG@/src", "url": "img/a.jpg?x=1&amp;y=2", "alt": "Tom &amp; Jerry &copy; 2024"},
        {"path": "IMG@/src", "url": "b.jpg?x=1&y=2", "alt": "cats & dogs &nbsp"},
        {"path": "IMG@/src", "url": "data:image/png;base64,AAAA", "alt": "a data url"},
        {"path": "IMG@/src", "url": "JavaScript:void(0)", "alt": "a script url"},
        {"path": "IMG@/src", "url": "../up/c.png", "alt": "Über den Wolken"},
    ]
    data = json.dumps(_wat_doc("http://page.example/a/b.html", links)).encode()
    assert _same(data, {})
    kind, pairs, rejected = _python(data, None, Rules(native=False))
    assert pairs[0].license == "cc-by-2.0"  # rel="license" wins over the first CC link
    assert [p.url for p in pairs] == [
        "http://cdn.example/base/&x/img/a.jpg?x=1&y=2",
        "http://cdn.example/base/&x/b.jpg?x=1&y=2",
        "http://cdn.example/base/up/c.png",
    ]
    # HTML5 attribute rules: "&nbsp" without ';' at the end decodes too (a space, collapsed)
    assert [p.text for p in pairs][:2] == ["Tom & Jerry © 2024", "cats & dogs"]
    assert rejected == {"data_url": 1, "javascript_url": 1}
    # a <head><base href> beats a BASE link; head <link rel=license> counts too
    head = {
        "Base": "https://other.example/x/",
        "Link": [{"url": "https://creativecommons.org/publicdomain/zero/1.0/", "rel": "license"}],
    }
    data = json.dumps(_wat_doc("http://page.example/a/b.html", links, head)).encode()
    assert _same(data, {})


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1, 2]",
        b'[{"Envelope": {}}]',  # an array is no WAT object, even if its items are
        b'{"Envelope": 3}',
        b'{"Envelope": {"Payload-Metadata": {"HTTP-Response-Metadata": {"HTML-Metadata": []}}}}',
        b'{"Envelope": {"Payload-Metadata": {}}}',  # a request record: no HTML
        b'{"Envelope": {"Payload-Metadata": "x"}}',
        json.dumps(_wat_doc(None, [])).encode(),  # no page URL anywhere
        json.dumps(_wat_doc("http://a.example/", [["IMG@/src", "/x.jpg", "alt text"]])).encode(),
        json.dumps(_wat_doc("http://a.example/", [{"path": 7, "url": "/x.jpg"}])).encode(),
        json.dumps(_wat_doc("http://a.example/", [{"path": "IMG@/src", "alt": 5}])).encode(),
        json.dumps(_wat_doc("http://a.example/", [], {"Base": {"href": "/b/"}})).encode(),
        b'{"Envelope": {"Envelope": 1}, "Envelope": {}}',  # duplicate key: the last one counts
        b'{"Envelope": {}, "x": "\xff"}',  # invalid UTF-8
        b'{"Envelope": {}, "x": 1e400}',
        b'{"Envelope": {}, "x": "\\ud800"}',
    ],
)
def test_odd_records_go_back_to_python_or_agree(payload):
    for record_url in (None, "http://record.example/p"):
        _same(payload, {}, record_url)


_link = st.one_of(
    st.fixed_dictionaries(
        {"path": st.just("IMG@/src"), "url": _raw_src, "alt": _alt},
        optional={"rel": st.sampled_from(["license", "nofollow"])},
    ),
    st.fixed_dictionaries(
        {
            "path": st.sampled_from(["A@/href", "LINK@/href", "BASE@/href", "BASE@/x", "IMG@/x"]),
            "url": st.sampled_from(
                ["http://b.example/d/", "/rel/", "https://creativecommons.org/licenses/by/4.0/"]
            ),
        },
        optional={"rel": st.sampled_from(["license", "x"])},
    ),
)
_page_url = st.sampled_from(
    [
        "http://Site.example/dir/sub/page.html",
        "https://h.example",
        "http://h.example/a/b/c/",
        "http://h.example//x//y/z",
        "https://Page.example:443/dir/p.html",
        "http://h.example/a/./b.html",
        "http://bücher.de/ä/p",
        "HTTP://h.example/p?q=1#f",
    ]
)


@settings(max_examples=400, deadline=3000, suppress_health_check=[HealthCheck.too_slow])
@given(
    _page_url,
    st.lists(_link, max_size=10),
    st.one_of(st.none(), st.sampled_from(["/b/", "http://base.example/x/y", "", "&amp;/z/"])),
    st.sampled_from(RULE_SETS),
    st.booleans(),
)
@example(
    "http://h.example/a/",
    [{"path": "IMG@/src", "url": "x.jpg", "alt": "&#x41;bcdef"}],
    None,
    {},
    False,
)
def test_fuzz_native_equals_python_on_wat_records(page_url, links, head_base, rules_kw, decoded):
    head = {} if head_base is None else {"Base": head_base}
    data = json.dumps(_wat_doc(page_url, links, head), ensure_ascii=bool(len(links) % 2)).encode()
    # well-formed records are always the compiled path's
    assert _same(data, rules_kw, decoded=decoded)


@settings(max_examples=300, deadline=3000, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_link, min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_fuzz_mutated_records_agree_or_go_back(links, rnd: random.Random):
    data = bytearray(json.dumps(_wat_doc("http://h.example/a/p.html", links)).encode())
    for _ in range(rnd.randint(1, 4)):
        i = rnd.randrange(len(data))
        op = rnd.random()
        if op < 0.4:
            data[i] = rnd.randrange(256)
        elif op < 0.7:
            del data[i]
        else:
            data[i:i] = rnd.choice([b'"', b",", b"{", b"]", b"\\u00e9", b"null", b"\xc3"])
    _same(bytes(data), {})


# --- language id: the compiled lid.176 == fastText ----------------------------------------

_SCRIPTS = (
    "abcxyzäöüßéèçñ абвгдежз αβγδε אבגד ابتث 日本語の文 한국어 हिन्दी ไทย 🙂🎉 0123456789 .,!?-'"
)


@settings(max_examples=300, deadline=3000, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(alphabet=_SCRIPTS, max_size=60).map(lambda t: " ".join(t.split()))))
@example(["", "a", "Das ist ein Haus", "__label__en", "</s> x", "A red car on the street"])
def test_native_language_id_equals_fasttext(texts):
    from laion_spark.extract import language

    language._CACHE.clear()
    native = language.detect_many(texts, native=True)
    language._CACHE.clear()
    python = language.detect_many(texts, native=False)
    language._CACHE.clear()
    assert language._native_model() is not None
    # same labels and the same float scores, bit for bit (the score is stored)
    assert native == python


@pytest.mark.parametrize(
    "text",
    [
        "&amp;lt; tag",
        "&#39;quoted&#x27; text",
        "&#0000039;zeros",
        "del &#127; gone",
        "tilde &#x7E;",
        "&AMP; upper",
        "&amp no semicolon",
        "a&b;c d e",
        "&#12345678; big",
        "&quot;&apos;&nbsp;x",
        "x&#32;y z w",
        "&#x1F600; smile",
        "&eacute;t&eacute;",
        "&#9; tab",
        "&lt;&gt;&amp;&amp;",
    ],
)
def test_entities_decode_like_python(text):
    links = [{"path": "IMG@/src", "url": f"/i.jpg?a=1{text[:6]}", "alt": text}]
    data = json.dumps(_wat_doc("http://h.example/p/q.html", links)).encode()
    for decoded in (False, True):  # decoded: the values are used as they are
        assert _same(data, {"min_caption_chars": 1}, decoded=decoded)


def test_decoded_and_raw_wats_of_real_pages_stay_in_the_core(tmp_path):
    """Every page record of tests/test_extract_inputs.PAGES (entities, a <base href>, a
    bracketed target URI, non-2xx statuses), written decoded and raw: the compiled path
    handles each and agrees with Python, pairs and rejection counts."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType
    from test_extract_inputs import CC_2024, OWN_CRAWL, PAGES, write_wat

    for decoded, info in ((True, CC_2024), (False, OWN_CRAWL)):
        path = write_wat(tmp_path / f"{decoded}.warc.wat.gz", PAGES, decoded, info)
        with open(path, "rb") as f:
            it = ArchiveIterator(f, record_types=WarcRecordType.metadata)
            records = [r.reader.read() for r in it]
        assert len(records) == len(PAGES)
        for data in records:
            for rules_kw in RULE_SETS[:2]:
                assert _same(data, rules_kw, decoded=decoded)
        assert _native(records[3], None, Rules(), decoded) == ("not_html", {"page_http_not_ok": 1})


def test_stage_rows_same_on_both_paths(tmp_path):
    """The rows a Spark task emits (stage.file_rows): built by the core on the compiled path,
    from Pair objects on the Python path; identical apart from the timing column."""
    from laion_spark.extract import language
    from laion_spark.extract.stage import ROW_SCHEMA, file_rows

    paths = write_synthetic_crawl(str(tmp_path), _crawl_pages(40))
    seconds = ROW_SCHEMA.fieldNames().index("seconds")
    got = {}
    for native in (True, False):
        language._CACHE.clear()
        rows = list(file_rows(paths["wat"], {"native": native}))
        got[native] = [r[:seconds] + r[seconds + 1 :] for r in rows]
    assert got[True] == got[False]
    assert len(got[True]) > 100 and got[True][-1][0] == "stats"
    assert all(len(r) == len(ROW_SCHEMA.fieldNames()) - 1 for r in got[True])


# --- non-ASCII captions in the core: ftfy's mojibake test and the safe characters ----------

# characters of ftfy's badness patterns, mojibake pieces, scripts, combining marks, spaces
_MOJIBAKE_ALPHABET = (
    "ÃÂâ€™œžÐ¿Ñ‚ÎºÏ„Ä…Å¡ÄŸÂ©Â®Â°Â±Â½Ã©Ã¨Ã¼Ã¶ÄËœ¦¤¨¬¯¸ƒˆˇ˘˛˜†‡‰⌐◊�ªº‚„•‹›€"
    "éèüößçñ Красивый дом Ein schönes Haus αβγ 日本語 한국어 ไทย عربى"
    "\u0301\u0308\u00a0\u3000\u2028\t\x01\x7f&;.,!?-' aZ_9"
)


@settings(max_examples=500, deadline=3000, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=_MOJIBAKE_ALPHABET, max_size=30))
@example("CafÃ© sign")
@example("Ã ")  # branch with the start-of-text anchor
@example("  Ã ")
@example("â€™s")
def test_core_mojibake_test_equals_ftfy(text):
    from ftfy.badness import is_bad

    extract = wat_extractor(Rules())
    assert extract._core.is_bad(text) == is_bad(text)


@settings(max_examples=300, deadline=3000, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.text(alphabet=_MOJIBAKE_ALPHABET, max_size=40), min_size=1, max_size=8),
    st.sampled_from(RULE_SETS),
)
def test_fuzz_non_ascii_captions_equal_python(alts, rules_kw):
    links = [{"path": "IMG@/src", "url": f"/i/{i}.jpg", "alt": a} for i, a in enumerate(alts)]
    data = json.dumps(_wat_doc("http://h.example/p/q.html", links)).encode()
    assert _same(data, rules_kw)


def test_plain_non_ascii_captions_stay_in_the_core():
    alts = [
        "Красивый дом у озера",
        "Ein schönes Haus am See",
        "湖のほとりの美しい家",
        "Ελληνικό σπίτι",
        "مرحبا بالعالم",
        "Une belle maison près du lac",
    ]
    links = [{"path": "IMG@/src", "url": f"/i/{i}.jpg", "alt": a} for i, a in enumerate(alts)]
    links.append({"path": "IMG@/src", "url": "/m.jpg", "alt": "CafÃ© mojibake"})
    data = json.dumps(_wat_doc("http://h.example/p/q.html", links)).encode()
    extract = wat_extractor(Rules())
    pairs = extract(data, None, None)
    assert [p.text for p in pairs][:6] == alts and pairs[6].text == "Café mojibake"
    assert extract._core.python_captions() == 1  # only the mojibake went to ftfy
    assert _same(data, {})

"""The extractor's fast paths give exactly what the plain rules give.

Each speed-up in the per-image path (caption and language caches, ftfy gate, URL fast path,
dot-segment joins, batched language id, the IMG-link comprehension of the WAT parser) is
checked against the straightforward code it replaces, on the real whirlwind record, a
synthetic crawl and fuzzed input.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from urllib.parse import urljoin

import ftfy
import pytest
from ftfy import fixes
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from shared_data import WHIRLWIND_WARC

from laion_spark.demo.crawl import write_synthetic_crawl
from laion_spark.extract import captions, language, pairs, urls
from laion_spark.extract.pairs import Page, Pair, Rules, judge_image, page_pairs
from laion_spark.extract.reader import extract_file
from laion_spark.extract.wat import parse_wat_json
from laion_spark.ids import sample_id

_FUZZ = settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


def _reference_pairs(page: Page, rules: Rules) -> tuple[list[Pair], Counter]:
    """page_pairs as plainly written: judge_image, ids.sample_id, language.detect per image."""
    rejected: Counter = Counter()
    out, seen = [], set()
    base = urls.resolve_base(page.url, page.base_href)
    images = page.images
    if len(images) > rules.max_images_per_page:
        rejected[pairs.TOO_MANY_IMAGES] += len(images) - rules.max_images_per_page
        images = images[: rules.max_images_per_page]
    for src, alt in images:
        url, text, why = judge_image(src, alt, base, rules)
        if why:
            rejected[why] += 1
            continue
        sid = sample_id(url, text)
        if sid in seen:
            rejected[pairs.DUPLICATE_IN_PAGE] += 1
            continue
        seen.add(sid)
        if rules.dedup_by_url:
            if url in seen:
                rejected[pairs.DUPLICATE_URL_IN_PAGE] += 1
                continue
            seen.add(url)
        code, score = language.detect(text) if rules.language_id else (None, 0.0)
        group = language.language_group(code, score, rules.min_language_score, rules.english_codes)
        out.append(Pair(sid, url, text, page.url, code, score, group, page.license))
    return out, rejected


_WORDS = "red blue green small old wooden stone river city street house dog cat bird".split()
_FOREIGN = [
    "Ein schönes Haus am See",
    "Une belle maison",
    "Красивый дом",
    "湖のほとり",
    "CafÃ© au lait",
]


def _crawl_pages(n: int = 30) -> list[dict]:
    """A small mix like the benchmark's: good, empty, short, foreign, entity-escaped and
    mojibake alts; same-host (written relative), CDN, svg, gif and Wikimedia-style URLs."""
    import random

    rnd = random.Random(7)
    out = []
    for p in range(n):
        host = f"http://site{p % 5}.example"
        images = []
        for i in range(12):
            k = p * 12 + i
            cap = " ".join(rnd.choice(_WORDS) for _ in range(rnd.randint(1, 8)))
            alt = rnd.choice(
                [cap, cap.capitalize(), f"{cap} & more", "", "ok", rnd.choice(_FOREIGN), cap]
            )
            url = rnd.choice(
                [
                    f"{host}/img/{k}.jpg",
                    f"{host}/img/{k % 7}.jpg",  # repeats across pages
                    f"https://cdn.example.net/p/{k}/large.jpeg?w=800",
                    f"https://upload.example.org/t/{k}.svg/200px-{k}.svg.png",
                    f"{host}/icons/{k}.svg",
                    f"{host}/anim/{k}.gif",
                ]
            )
            images.append((url, alt))
        out.append(
            {
                "url": f"{host}/section/deep/page-{p}.html",
                "images": images,
                "links": [(f"{host}/a/{p}", "a link")],
                "license": "https://creativecommons.org/licenses/by/4.0/" if p % 4 == 0 else None,
            }
        )
    return out


def _synthetic_pages(tmp_path) -> list[Page]:
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    paths = write_synthetic_crawl(str(tmp_path), _crawl_pages())
    out = []
    with open(paths["wat"], "rb") as f:
        for r in ArchiveIterator(f, record_types=WarcRecordType.metadata):
            page = parse_wat_json(r.reader.read(), r.headers.get("WARC-Target-URI"))
            if page is not None:
                out.append(page)
    assert len(out) == 30
    return out


# --- captions: cache and ftfy gate -------------------------------------------------------


MOJIBAKE = [
    ("CafÃ© sign", "Café sign"),
    ("Itâ€™s a dog", "It's a dog"),  # mojibake of a curly quote, then uncurled
    ("ÐŸÑ€Ð¸Ð²ÐµÑ‚ Ð¼Ð¸Ñ€", "Привет мир"),
    ("The Ã¦sthetic of a Ã¼ber photo", "The æsthetic of a über photo"),
    ("ﬂuﬀy ﬁsh on a boat", "fluffy fish on a boat"),  # ligatures
    ("ＬＯＵＤ　ＮＯＩＳＥＳ here", "LOUD NOISES here"),  # full width
    ("“Quoted” and ‘single’ marks", "\"Quoted\" and 'single' marks"),
    ("Tom &amp; Jerry in é", "Tom &amp; Jerry in é"),  # no HTML unescaping: decoded once before
    ("line\u2028separator é", "line separator é"),
    ("e\u0301 combining accent photo", "é combining accent photo"),  # NFC only
]


@pytest.mark.parametrize("raw,want", MOJIBAKE)
def test_mojibake_and_ftfy_fixes_still_applied(raw, want):
    assert captions.clean_caption(raw) == (want, None)
    assert captions.gated_fix_text(raw) == ftfy.fix_text(raw, **captions.FTFY_OPTIONS)


def test_ftfy_gate_covers_every_character_ftfy_fixers_change():
    """Every character outside the gate is left alone by each of ftfy's fixers (besides the
    mojibake repair, gated by is_bad): all fixers here act character by character (HTML
    unescaping is off, terminal escapes need ESC, in the gate), so one pass over the string
    of all such characters proves the gate complete."""
    gate = captions._ftfy_gate()
    rest = "".join(
        chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF and not gate.match(chr(c))
    )
    assert len(rest) > 1_000_000
    for name in (
        "fix_c1_controls",
        "fix_latin_ligatures",
        "fix_character_width",
        "uncurl_quotes",
        "fix_line_breaks",
        "fix_surrogates",
        "remove_terminal_escapes",
        "remove_control_chars",
    ):
        assert getattr(fixes, name)(rest) == rest, name


_MOJI_ALPHABET = list("abcAZ é ÃÂ©€â€™œžÐ¿Ñ\u0301\u0303Ω&;<>ﬁＡ“”…–—\xa0\u2028") + [
    "Ã©",
    "â€™",
    "Ã\xa0",
    "&amp;",
    "ÐŸÑ€",
    "湖",
]


@_FUZZ
@given(st.lists(st.sampled_from(_MOJI_ALPHABET), max_size=12), st.text(max_size=12))
def test_fuzz_gated_fix_text_equals_ftfy(parts, noise):
    for text in ("".join(parts), "".join(parts) + noise, noise):
        text = captions._strip_controls(text)  # what clean_caption hands to the fixer
        assert captions.gated_fix_text(text) == ftfy.fix_text(text, **captions.FTFY_OPTIONS)


def test_caption_cache_is_per_rules_bounded_and_exact(monkeypatch):
    monkeypatch.setattr(pairs, "CAPTION_CACHE_MAX", 3)
    alts = ["A red car", "A red car", "ok", None, "", "Über ein Haus", "A red car", "ok"] * 3
    alts += ["A very long alt text " * 20] * 2
    page = Page(
        url="http://h.example/p.html",
        images=[(f"/img/{i}.jpg", a) for i, a in enumerate(alts)],
    )
    rules = Rules(language_id=False)
    rejected: Counter = Counter()
    got = list(page_pairs(page, rules, rejected))
    ref, ref_rejected = _reference_pairs(page, Rules(language_id=False))
    assert got == ref and rejected == ref_rejected
    assert 0 < len(rules.caption_cache) <= 3
    assert all(len(a) <= pairs.CACHE_MAX_CHARS for a in rules.caption_cache)
    # another rule set never sees this cache
    assert Rules().caption_cache == {}


# --- language id: direct binding call, cache, batches ------------------------------------


def test_language_cache_and_direct_call_equal_detect(monkeypatch):
    monkeypatch.setattr(language, "CACHE_MAX", 4)
    language._CACHE.clear()
    texts = ["A red house by the lake", "Ein Haus am See", "湖のほとりの美しい家", "ok"]
    texts += ["Красивый дом у озера", "A red house by the lake", "", "A long caption " * 40]
    for t in texts * 2:
        assert language.detect_clean(t) == language.detect(t)
    assert 0 < len(language._CACHE) <= 4
    assert all(len(t) <= language.CACHE_MAX_CHARS for t in language._CACHE)


def test_reader_batches_language_exactly_like_per_pair(tmp_path, monkeypatch):
    from laion_spark.extract import reader

    monkeypatch.setattr(reader, "LANGUAGE_BATCH", 7)  # batches cut across pages
    pages = [
        {
            "url": f"http://127.0.0.1:8765/p/{k}.html",
            "images": [
                ("/a.jpg", "A blue square on a red background"),
                (f"/b{k}.jpg", "Ein blaues Quadrat auf rotem Grund"),
                (f"/c{k}.jpg", "Un carré bleu sur fond rouge"),
            ],
        }
        for k in range(9)
    ]
    paths = write_synthetic_crawl(str(tmp_path), pages)
    got, _ = extract_file(paths["wat"])
    assert len(got) == 27
    for pair, _ in got:
        code, score = language.detect(pair.text)
        assert (pair.language, pair.language_score) == (code, score)
        assert pair.language_group == language.language_group(code, score, 0.25)


# --- page_pairs == the plain rules ---------------------------------------------------------


def _whirlwind_page() -> Page:
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    from laion_spark.extract.html import parse_html

    with open(WHIRLWIND_WARC, "rb") as f:
        for r in ArchiveIterator(f, record_types=WarcRecordType.response):
            return parse_html(r.reader.read(), r.headers.get("WARC-Target-URI"), r.http_charset)
    raise AssertionError("no response record")


@pytest.mark.parametrize(
    "rules",
    [
        Rules(),
        Rules(dedup_by_url=True, max_images_per_page=5),
        Rules(min_caption_chars=1, drop_extensions=frozenset(), language_id=False),
        Rules(fix_text=False),
    ],
)
def test_page_pairs_equal_plain_rules_on_real_and_synthetic_pages(rules, tmp_path):
    rules_copy = Rules(**{k: getattr(rules, k) for k in rules.__dataclass_fields__})
    real = [_whirlwind_page()] + _synthetic_pages(tmp_path)
    for page in real:
        rejected: Counter = Counter()
        got = list(page_pairs(page, rules, rejected))
        ref, ref_rejected = _reference_pairs(page, rules_copy)
        assert got == ref and rejected == ref_rejected


_src = st.lists(
    st.sampled_from(
        ["http://", "https://", "HTTP://", "//", "/", "./", "../", "a", "b.svg", "x.JPG", "?q=1"]
        + ["#f", ":8080", "@", "ü", " ", "%20", "\t", "h.example", "data:", "..", "."]
    ),
    max_size=8,
)
_alt = st.one_of(
    st.none(),
    st.sampled_from(["", "ok", "A red car", "Über ein Haus", "CafÃ© sign", "A\tred\x00car"]),
    st.sampled_from(["   ", "  a  b  ", "abcd", "abcde", "x" * 11, " Tom & Jerry ", "a\x0bb c"]),
    st.text(max_size=20),
    st.text(alphabet=st.characters(max_codepoint=127), max_size=14),
)


@_FUZZ
@given(
    st.lists(st.tuples(_src.map("".join), _alt), max_size=12),
    st.booleans(),
    st.sampled_from([(5, 2000), (1, 10), (0, 1), (12, 12)]),
)
def test_fuzz_page_pairs_equal_plain_rules(images, dedup, bounds):
    page = Page(url="https://Page.example:443/dir/sub/p.html", images=images)
    kw = dict(language_id=False, dedup_by_url=dedup)
    kw.update(min_caption_chars=bounds[0], max_caption_chars=bounds[1])
    rules = Rules(**kw)
    rejected: Counter = Counter()
    got = list(page_pairs(page, rules, rejected))
    ref, ref_rejected = _reference_pairs(page, Rules(**kw))
    assert got == ref and rejected == ref_rejected


# --- URL fast paths -------------------------------------------------------------------------

_url_part = st.sampled_from(
    ["http://", "https://", "HtTp://", "ex.COM", "a.b", "-", ".", "/", "//", "?", "#", ":"]
    + [":80", ":443", ":99999", "@", "%41", "ü", " ", "\x00", "\x7f", "[::1]", "&", "=", "a"]
)
# mostly URLs the fast path takes (repeated entries weight the draw), with the shapes that
# must fall back (upper-case scheme, port, userinfo, IPv6, IDN, space, DEL, ...) mixed in
_url = st.tuples(
    st.sampled_from(["http://", "https://"] * 3 + ["HTTP://", "ftp://", "", "//"]),
    st.sampled_from(["ex.com", "Ex.COM", "a-b.C0", "h", "x..y"] * 3 + ["", "ü.de", "u@h", "[::1]"]),
    st.sampled_from([""] * 6 + [":80", ":443", ":8080", ":x", ":99999"]),
    st.lists(
        st.sampled_from(["/", "a", "B.jpg", "%20", "'", ";", "~", '"'] * 2 + [" ", "ü", "\x7f"]),
        max_size=6,
    ).map("".join),
    st.sampled_from(["", "?", "?q=1&r=2", "#f", "#ü x", "?q#f", "??"] * 2 + ["?q=ü", "?a b"]),
).map("".join)


@_FUZZ
@given(st.one_of(st.lists(_url_part, max_size=12).map("".join), _url))
def test_fuzz_simple_url_fast_path_equals_general(url):
    def run(f):
        try:
            return f(url)
        except (ValueError, UnicodeError):
            return "invalid"

    assert run(urls._normalize) == run(urls._normalize_general)


# relative srcs, mostly of the shapes page_resolver takes itself (weighted by repetition)
_rel_src = st.lists(
    st.sampled_from(["/", "./", "../", "a", "B.svg", "x.GIF", "..", ".", "?q", "#f"] * 3)
    | st.sampled_from(["//", ":", "\\", " ", "\t", "ü", "data:", "%20", "h.example"]),
    max_size=8,
).map("".join)
_raw_src = st.one_of(_url, _rel_src, _rel_src, st.none())


@settings(max_examples=500, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(
    _raw_src,
    st.sampled_from(
        [
            "http://Site.example/dir/sub/page.html",
            "https://h.example",
            "http://h.example/a/b/c/",
            "http://h.example//x//y/z",
            "https://Page.example:443/dir/p.html",
            "http://u@h.example/p",
            "http://bücher.de/ä/p",
        ]
    ),
    st.sampled_from([16, 40, 2048]),
)
@example("a/../b.jpg", "http://Site.example/dir/sub/page.html", 2048)
@example("/a/./b.svg", "https://h.example", 2048)
@example("a//b.jpg", "http://h.example/a/b/c/", 2048)
@example("../../a/../b.jpg", "http://h.example/a/b/c/", 2048)
@example("x/.hidden/y.jpg", "http://h.example/a/b/c/", 2048)
@example("HTTP://Ex.COM/a.jpg#f g", "http://h.example/a/b/c/", 2048)
def test_fuzz_page_resolver_equals_resolve_image_url(raw, base, max_chars):
    drop = frozenset({"svg", "gif"})
    got = urls.page_resolver(base, max_chars, drop)(raw)
    assert got == urls.resolve_image_url(raw, base, max_chars, drop)


@_FUZZ
@given(
    st.lists(st.sampled_from(["./", "../", ".", "..", "/", "a", "b.jpg", "?x", "#f"]), max_size=8),
    st.sampled_from(
        [
            "http://h.example/a/b/c/d/page.html?q=1",
            "https://h.example",
            "http://h.example/dir/",
            "http://h.example/a/b/c/",
            "http://h.example//x//y/z",
            "http://h.example/a;p/b;q",
        ]
    ),
)
def test_fuzz_dot_segment_join_equals_urljoin(parts, base):
    raw = "".join(parts)
    if "//x" in base and not raw.startswith("."):
        # a plain relative path keeps the base's empty segments (as browsers do), where
        # urljoin collapses them; only the dot-segment joins are urljoin's here
        return

    def norm(u):
        try:
            return urls._normalize_general(u)
        except (ValueError, UnicodeError):
            return "invalid"

    assert norm(urls.join_url(base, raw)) == norm(urljoin(base, raw))


# --- WAT: the IMG-link comprehension == the general loop --------------------------------------

_link = st.fixed_dictionaries(
    {
        "path": st.sampled_from(["IMG@/src", "A@/href", "BASE@/href", "LINK@/href", "IMG@/x", 7]),
        "url": st.one_of(st.sampled_from(["/x.jpg", "a&amp;b", "//h/y.png"]), st.none()),
        "alt": st.one_of(st.sampled_from(["A caption", "Tom &amp; Jerry", ""]), st.none()),
    }
)


@_FUZZ
@given(st.lists(st.one_of(_link, st.integers()), max_size=10), st.booleans())
def test_fuzz_wat_fast_link_path_equals_general_loop(links, with_head_base):
    head = {"Base": "http://base.example/b/"} if with_head_base else {}
    doc = {
        "Envelope": {
            "WARC-Header-Metadata": {"WARC-Target-URI": "http://fuzz.example/a/b"},
            "Payload-Metadata": {
                "HTTP-Response-Metadata": {"HTML-Metadata": {"Head": head, "Links": links}}
            },
        }
    }
    fast = parse_wat_json(json.dumps(doc))
    # a mention of creativecommons anywhere sends the record through the general loop
    doc["Envelope"]["Note"] = "not a link to creativecommons"
    slow = parse_wat_json(json.dumps(doc))
    assert (fast.images, fast.base_href) == (slow.images, slow.base_href)


def test_synthetic_wat_and_warc_still_equal_with_all_fast_paths(tmp_path):
    paths = write_synthetic_crawl(str(tmp_path), _crawl_pages())
    wat, wat_stats = extract_file(paths["wat"])
    warc, warc_stats = extract_file(paths["warc"])
    assert [p for p, _ in wat] == [p for p, _ in warc] and len(wat) > 100
    assert wat_stats.rejected == warc_stats.rejected
    for pair, _ in wat:
        assert pair.sample_id == sample_id(pair.url, pair.text)
        assert unicodedata.is_normalized("NFC", pair.text)

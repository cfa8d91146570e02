"""From a parsed page (WAT or HTML, same shape) to image-text pairs, LAION rules applied.

Both parsers produce a `Page`; `page_pairs` is the one place the rules run, which is why
the WAT path and the WARC path give the same pairs for the same page.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from laion_spark.extract import captions, language, urls
from laion_spark.ids import normalize_caption

TOO_MANY_IMAGES = "too_many_images"
DUPLICATE_IN_PAGE = "duplicate_in_page"
DUPLICATE_URL_IN_PAGE = "duplicate_url_in_page"
# pages (not images) that cannot hold pairs, counted once per page in `rejected`
NOT_HTML = "page_not_html"
HTTP_NOT_OK = "page_http_not_ok"
# per-task caption cache: at most this many alts of at most this many characters (<60 MB)
CAPTION_CACHE_MAX = 50_000
CACHE_MAX_CHARS = 256


class PageRejected(Exception):
    """A page the rules refuse as a whole (counted in `rejected`, not an error)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def http_status_code(value: object) -> int | None:
    """An HTTP status as WAT JSON or a WARC's status line gives it: exactly three ASCII
    digits (a string or an int); None for anything else (then no status rule applies)."""
    if value.__class__ is int and 100 <= value <= 999:  # type: ignore[operator]
        return value  # type: ignore[return-value]
    if isinstance(value, str) and len(value) == 3 and value.isascii() and value.isdigit():
        return int(value)
    return None


def http_status_rejection(status: int | None) -> str | None:
    """The one status rule of both paths (WARC response, WAT HTTP-Response-Metadata and the
    compiled WAT core): a page whose HTTP status is known and not 2xx holds no pairs."""
    if status is not None and not 200 <= status < 300:
        return HTTP_NOT_OK
    return None


@dataclass
class Page:
    url: str
    # (src, alt) as found: src raw (maybe relative), alt None when the attribute is absent
    images: list[tuple[str | None, str | None]] = field(default_factory=list)
    base_href: str | None = None
    license: str | None = None


@dataclass
class Rules:
    """The extract settings a worker needs, in a fast form (built once per task)."""

    min_caption_chars: int = 5
    max_caption_chars: int = 2000
    fix_text: bool = True
    max_url_chars: int = 2048
    drop_extensions: frozenset[str] = frozenset({"svg", "gif"})
    use_srcset: bool = False
    language_id: bool = True
    min_language_score: float = 0.25
    english_codes: frozenset[str] = frozenset({"en"})
    max_images_per_page: int = 2000
    max_page_bytes: int = 5_000_000
    max_wat_record_bytes: int = 5_000_000
    dedup_by_url: bool = False
    # whether a WAT's attribute values are already decoded: auto | decoded | raw (entities.py)
    wat_entities: str = "auto"
    # WAT records through the compiled extractor (laion_spark_native) when it is installed
    native: bool = True
    # clean_caption results per distinct alt text for this task (pure function of the alt
    # and the rules above); bounded by CAPTION_CACHE_MAX
    caption_cache: dict = field(default_factory=dict, repr=False, compare=False)

    def clean_caption(self, alt: str) -> tuple[str | None, str | None]:
        """captions.clean_caption(alt) with these rules, kept in `caption_cache`."""
        got = self.caption_cache.get(alt)
        if got is not None:
            return got
        got = captions.clean_caption(
            alt, self.min_caption_chars, self.max_caption_chars, self.fix_text
        )
        if len(alt) <= CACHE_MAX_CHARS:  # long alts rarely repeat; bounds the memory
            if len(self.caption_cache) >= CAPTION_CACHE_MAX:
                self.caption_cache.clear()
            self.caption_cache[alt] = got
        return got

    @classmethod
    def from_options(cls, opts: dict | None) -> Rules:
        opts = dict(opts or {})
        kw = {k: v for k, v in opts.items() if k in cls.__dataclass_fields__}
        for k in ("drop_extensions", "english_codes"):
            if k in kw:
                kw[k] = frozenset(str(x).lower().lstrip(".") for x in kw[k])
        return cls(**kw)


@dataclass(slots=True)  # slots: one is built per kept image, cheaper to create and fill
class Pair:
    sample_id: str
    url: str
    text: str
    page_url: str
    language: str | None
    language_score: float
    language_group: str
    license: str | None
    crawl_id: str | None = None  # set by the reader (config, file path or warcinfo)


def id_caption(text: str) -> str:
    """A clean caption as ids.sample_id hashes it (ids.normalize_caption), skipping the
    call for ASCII text: a clean caption is whitespace-collapsed, and ASCII is NFC."""
    return text if text.isascii() else normalize_caption(text)


def judge_image(
    src: str | None, alt: str | None, base: str, rules: Rules
) -> tuple[str | None, str | None, str | None]:
    """(absolute URL, clean caption, None) for a kept image, or (None, None, reason)."""
    # caption first: it is the cheaper test and rejects most images (no/short alt)
    text, why = captions.clean_caption(
        alt, rules.min_caption_chars, rules.max_caption_chars, rules.fix_text
    )
    if why:
        return None, None, why
    url, why = urls.resolve_image_url(src, base, rules.max_url_chars, rules.drop_extensions)
    if why:
        return None, None, why
    return url, text, None


def page_pairs(
    page: Page,
    rules: Rules,
    rejected: Counter,
    language_later: bool = False,
    crawl_id: str | None = None,
) -> Iterator[Pair]:
    """Pairs of one page; every dropped image adds 1 to `rejected[reason]`.

    `language_later`: leave the language columns empty for the caller to fill with
    `fill_language` (the reader does it in batches across pages). `crawl_id` goes into
    every pair.

    The per-image hot path of the extractor: judge_image's two rules inlined (URLs through a
    per-page urls.page_resolver), captions.clean_caption cached per distinct alt text
    (`Rules.caption_cache`), language id cached per distinct caption
    (language.detect_clean); output identical to calling judge_image and ids.sample_id per
    image (tests/test_extract_fast.py).
    """
    base = urls.resolve_base(page.url, page.base_href)
    seen: set[str] = set()
    images = page.images
    if len(images) > rules.max_images_per_page:
        rejected[TOO_MANY_IMAGES] += len(images) - rules.max_images_per_page
        images = images[: rules.max_images_per_page]
    # == urls.resolve_image_url(src, base, max_url_chars, drop_extensions)
    resolve = urls.page_resolver(base, rules.max_url_chars, rules.drop_extensions)
    sha256 = hashlib.sha256
    page_url, lic = page.url, page.license
    kept: list[Pair] = []
    for src, alt in images:
        # caption first: it is the cheaper test and rejects most images (no/short alt)
        if alt is None:
            rejected[captions.NO_ALT] += 1
            continue
        text, why = rules.clean_caption(alt)
        if why:
            rejected[why] += 1
            continue
        url, why = resolve(src)
        if why:
            rejected[why] += 1
            continue
        # == laion_spark.ids.sample_id(url, text): the URL is already normalised (urls.py)
        key = f"{url}\t{id_caption(text)}"
        sid = sha256(key.encode()).hexdigest()[:32]
        if sid in seen:
            rejected[DUPLICATE_IN_PAGE] += 1
            continue
        seen.add(sid)
        if rules.dedup_by_url:
            # LAION-5B: one caption per image URL, the first one on the page
            if url in seen:
                rejected[DUPLICATE_URL_IN_PAGE] += 1
                continue
            seen.add(url)
        pair = Pair(sid, url, text, page_url, None, 0.0, "", lic, crawl_id)
        if language_later:
            yield pair
        else:
            kept.append(pair)
    if kept:
        fill_language(kept, rules)
        yield from kept


def fill_language(pairs: list[Pair], rules: Rules) -> None:
    """Set language, language_score and language_group of pairs, in one run over them.

    Back-to-back model calls keep fastText's tables in the CPU cache: interleaved with the
    rule code, one call per pair ran about 1.5x slower, which is why the reader batches
    pairs across pages before calling this. With `rules.native` and laion_spark_native
    installed, the batch is one call into the compiled lid.176 (same scores, bit for bit).
    """
    group_of = language.language_group
    min_score, english = rules.min_language_score, rules.english_codes
    # pairs of the compiled WAT extractor arrive with their language set
    pairs = [pair for pair in pairs if not pair.language_group]
    if rules.language_id:
        found = language.detect_many([pair.text for pair in pairs], rules.native)
        for pair, (code, score) in zip(pairs, found, strict=True):
            pair.language, pair.language_score = code, score
            pair.language_group = group_of(code, score, min_score, english)
    else:
        nolang = group_of(None, 0.0, min_score, english)
        for pair in pairs:
            pair.language_group = nolang

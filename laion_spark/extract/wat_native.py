"""WAT records through the compiled extractor (package `laion-spark-native`, built from
`native/` by scripts/setup.sh), with the Python rules as its reference and fallback.

The Rust core parses the record's JSON, walks its links, applies the URL and caption rules
for the common shapes and identifies the language of the pairs it keeps (lid.176). What it
does not handle itself it either calls back into (the functions below: entities, non-ASCII
captions, URLs that need urljoin/IDNA) or hands back whole (unusual JSON shapes), and
`wat.parse_wat_json` + `pairs.page_pairs` do it.
Same pairs, same counts either way (tests/test_extract_native.py).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from laion_spark.extract import language, urls
from laion_spark.extract.captions import unescape_entities
from laion_spark.extract.license import page_license
from laion_spark.extract.pairs import Pair, Rules
from laion_spark.ids import normalize_caption

log = logging.getLogger(__name__)
_WARNED = False

# the result of one record: None = Python must do it, False = no HTML page in it
NativeResult = list[Pair] | bool | None


class WatExtractor:
    """WAT records -> pairs through the compiled core, for one task's rules."""

    def __init__(self, core: Any):
        self._core = core

    def __call__(
        self, payload: bytes, record_url: str | None, crawl_id: str | None
    ) -> NativeResult:
        got = self._core.record(payload, record_url)
        if got is None or got is False:
            return got
        page_url, lic_links, found = got
        lic = page_license(lic_links) if lic_links else None
        return [
            Pair(sid, url, text, page_url, code, score, group, lic, crawl_id)
            for sid, url, text, code, score, group in found
        ]

    def drain_rejected(self, rejected: Counter) -> None:
        """Add the images rejected so far (counted in the core, by reason) to `rejected`."""
        rejected.update(self._core.take_rejected())


def wat_extractor(rules: Rules) -> WatExtractor | None:
    """The compiled WAT extractor for these rules; None when the rules turn it off or the
    package is not installed (the caller then parses every record in Python)."""
    global _WARNED
    if not rules.native:
        return None
    try:
        import laion_spark_native
    except ImportError:
        if not _WARNED:
            _WARNED = True
            log.warning(
                "laion-spark-native is not installed: extracting WAT records in pure Python "
                "(same pairs, about 2-3x slower); scripts/setup.sh builds it from native/"
            )
        return None

    def clean_alt(alt: str) -> tuple[str | None, str | None, str | None]:
        alt = unescape_entities(alt)
        got = rules.caption_cache.get(alt)
        text, why = got if got is not None else rules.clean_caption(alt)
        if why:
            return None, why, None
        assert text is not None
        return text, None, text if text.isascii() else normalize_caption(text)

    def page_setup(page_url: str, base_href: str | None) -> tuple[Any, Any, str]:
        href = unescape_entities(base_href) if isinstance(base_href, str) else None
        base = urls.resolve_base(page_url, href)
        parts = urls.base_parts(base)
        return parts, urls.page_origin(parts), base

    def resolve_url(raw: str, base: str) -> tuple[str | None, str | None]:
        return urls.resolve_image_url(raw, base, rules.max_url_chars, rules.drop_extensions)

    return WatExtractor(
        laion_spark_native.WatExtractor(
            rules.min_caption_chars,
            rules.max_caption_chars,
            rules.max_url_chars,
            sorted(rules.drop_extensions),
            rules.max_images_per_page,
            rules.dedup_by_url,
            clean_alt,
            unescape_entities,
            page_setup,
            resolve_url,
            language._native_model() if rules.language_id else None,
            rules.min_language_score,
            sorted(rules.english_codes),
        )
    )

"""WAT records through the compiled extractor (package `laion-spark-native`, built from
`native/` by scripts/setup.sh), with the Python rules as its reference and fallback.

The Rust core parses the record's JSON, walks its links, applies the status, URL and
caption rules for the common shapes and identifies the language of the pairs it keeps
(lid.176). What it does not handle itself it either calls back into (the functions below:
entities, non-ASCII captions, URLs that need urljoin/IDNA) or hands back whole (unusual
JSON shapes), and `wat.parse_wat_json` + `pairs.page_pairs` do it. Attribute values are
decoded once, by the core (simple references) or `entities.unescape_attribute`, unless the
WAT's writer already decoded them (`decoded`); the callbacks get decoded values.
Same pairs, same counts either way (tests/test_extract_native.py).
"""

from __future__ import annotations

import functools
import logging
import re
from collections import Counter
from typing import Any

from laion_spark.extract import captions, language, urls
from laion_spark.extract.entities import unescape_attribute
from laion_spark.extract.license import page_license
from laion_spark.extract.pairs import Pair, Rules, id_caption

log = logging.getLogger(__name__)
_WARNED = False

# the result of one record: None = Python must do it, False = no HTML page in it
NativeResult = list[Pair] | bool | None


@functools.cache
def caption_tables() -> tuple | None:
    """What the core needs to clean non-ASCII alt texts itself, built from this Python's own
    unicodedata and ftfy so the two paths agree by construction (native/src/caption.rs):
    the BMP characters the Python rule leaves alone, \\w and \\s as Python defines them, the
    ASCII characters of the ftfy gate, and ftfy's BADNESS_RE as sets and branches. None when
    that regex has a shape not translated here (then Python cleans every non-ASCII alt).
    About 0.1 s, once per process."""
    import unicodedata as ud

    from ftfy.badness import BADNESS_RE

    try:
        try:  # the regex parser's modules: re._parser since Python 3.11, sre_parse before
            import re._constants as sre_c
            import re._parser as sre_parse
        except ImportError:  # pragma: no cover (Python 3.10)
            import sre_constants as sre_c  # type: ignore[no-redef]
            import sre_parse  # type: ignore[no-redef]
        program = _badness_program(BADNESS_RE, sre_parse, sre_c)
    except Exception as e:  # pragma: no cover (a Python or ftfy this was not written for)
        log.warning("ftfy's BADNESS_RE not translated (%r): non-ASCII captions in Python", e)
        return None
    if program is None:
        log.warning("ftfy's BADNESS_RE has a new shape: non-ASCII captions in Python")
        return None
    gate = captions._ftfy_gate()
    # second characters of canonical compositions (NFC may merge them); planes 2+ hold no
    # two-character canonical decomposition
    seconds = set()
    for cp in range(0x20000):
        d = ud.decomposition(chr(cp))
        if d and d[0] != "<" and len(parts := d.split()) == 2:
            seconds.add(int(parts[1], 16))
    safe, word = bytearray(0x10000), bytearray(0x10000)
    for cp in range(0x10000):
        c = chr(cp)
        word[cp] = c.isalnum() or c == "_"
        safe[cp] = not (
            cp < 0x80
            or cp in seconds
            or ud.category(c)[0] in "CZ"
            or ud.combining(c)
            or not c.isprintable()
            or gate.match(c)
            or ud.normalize("NFC", c) != c
        )
    space = [cp for cp in range(0x10000) if chr(cp).isspace()]
    ascii_gate = [cp for cp in range(0x80) if gate.match(chr(cp)) and ud.category(chr(cp)) != "Cc"]
    return bytes(safe), bytes(word), space, ascii_gate, *program


def _badness_program(pattern, sre_parse, sre_c) -> tuple[list, list] | None:
    """ftfy's BADNESS_RE as (sets, branches) for caption.rs: every branch a sequence of
    single-character matchers. None if any part is something else."""
    sets: list[tuple[list[tuple[int, int]], bool, bool, bool]] = []
    index: dict = {}

    def set_of(items) -> int | None:
        ranges, space, word, negate = [], False, False, False
        for i, (op, av) in enumerate(items):
            if op is sre_c.NEGATE and i == 0:
                negate = True
            elif op is sre_c.LITERAL:
                ranges.append((av, av))
            elif op is sre_c.RANGE:
                ranges.append(av)
            elif op is sre_c.CATEGORY and av is sre_c.CATEGORY_SPACE:
                space = True
            elif op is sre_c.CATEGORY and av is sre_c.CATEGORY_WORD:
                word = True
            else:
                return None
        key = (tuple(ranges), space, word, negate)
        if key not in index:
            index[key] = len(sets)
            sets.append((ranges, space, word, negate))
        return index[key]

    if pattern.flags & ~(re.VERBOSE | re.UNICODE):
        return None
    tree = list(sre_parse.parse(pattern.pattern, pattern.flags))
    if len(tree) != 1 or tree[0][0] is not sre_c.BRANCH:
        return None
    branches = []
    for branch in tree[0][1][1]:
        items: list[tuple[int, int]] = []
        for op, av in branch.data:
            if op is sre_c.LITERAL:
                k, s = 0, set_of([(op, av)])
            elif op is sre_c.IN:
                k, s = 0, set_of(av)
            elif op is sre_c.ANY:
                k, s = 1, 0
            elif op is sre_c.AT and av is sre_c.AT_BEGINNING:
                k, s = 3, 0
            elif op is sre_c.MAX_REPEAT and av[:2] == (0, 1) and len(av[2].data) == 1:
                sub_op, sub_av = av[2].data[0]
                k = 2
                s = set_of(sub_av if sub_op is sre_c.IN else [(sub_op, sub_av)])
            else:
                return None
            if s is None:
                return None
            items.append((k, s))
        # caption.rs skips the search when no non-ASCII character of an explicit set is in
        # the text: so every branch must need one
        if not any(
            k == 0 and not any(sets[s][1:]) and all(lo >= 0x80 for lo, _ in sets[s][0])
            for k, s in items
        ):
            return None
        branches.append(items)
    return sets, branches


class WatExtractor:
    """WAT records -> pairs through the compiled core, for one task's rules."""

    def __init__(self, core: Any):
        self._core = core

    def __call__(
        self, payload: bytes, record_url: str | None, crawl_id: str | None
    ) -> NativeResult:
        got = self._core.record(payload, record_url, (), (crawl_id,))
        if got is None or got is False:
            return got
        return [Pair(*fields) for fields in got]  # the core's tuples are in Pair's order

    def rows(self, payload: bytes, prefix: tuple, suffix: tuple) -> list[tuple] | bool | None:
        """Like calling it, with each pair as the tuple prefix + Pair fields up to license +
        suffix (reader.RowFormat), built by the core: no Pair objects."""
        return self._core.record(payload, None, prefix, suffix)

    def drain_rejected(self, rejected: Counter) -> None:
        """Add the images rejected so far (counted in the core, by reason) to `rejected`."""
        rejected.update(self._core.take_rejected())


def wat_extractor(rules: Rules, decoded: bool = False) -> WatExtractor | None:
    """The compiled WAT extractor for these rules and a WAT whose attribute values are
    already decoded (`decoded`) or not; None when the rules turn it off or the package is
    not installed (the caller then parses every record in Python)."""
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
                "(same pairs, about 3x slower); scripts/setup.sh builds it from native/"
            )
        return None

    def clean_alt(alt: str) -> tuple[str | None, str | None, str | None]:
        text, why = rules.clean_caption(alt)
        if why:
            return None, why, None
        assert text is not None
        return text, None, id_caption(text)

    def page_setup(page_url: str, base_href: str | None) -> tuple[Any, Any, str]:
        base = urls.resolve_base(page_url, base_href)
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
            unescape_attribute,
            page_setup,
            resolve_url,
            page_license,
            language._native_model() if rules.language_id else None,
            rules.min_language_score,
            sorted(rules.english_codes),
            caption_tables(),
            rules.fix_text,
            decoded,
        )
    )

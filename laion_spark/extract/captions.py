"""Caption (alt text) rules after LAION-5B: repair, clean, bound."""

from __future__ import annotations

import re
import unicodedata

NO_ALT = "no_alt"
CAPTION_TOO_SHORT = "caption_too_short"
CAPTION_TOO_LONG = "caption_too_long"

# what ftfy.fix_text runs with: everything but HTML unescaping. Entities are decoded once,
# where the alt text is read (the HTML parser, or entities.unescape_attribute for a raw WAT);
# a caption is text, so an "&amp;" still in it was written "&amp;amp;" and stays
FTFY_OPTIONS = {"normalization": "NFC", "unescape_html": False}


def _strip_controls(text: str) -> str:
    # Cc (controls incl. tab/newline) -> space; Cf (zero-width, soft hyphen, bidi marks) -> ''
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat == "Cc":
            out.append(" ")
        elif cat in ("Cf", "Cs", "Co", "Cn"):
            continue
        else:
            out.append(ch)
    return "".join(out)


def _ftfy_gate() -> re.Pattern[str]:
    """Characters that one of ftfy's fixers other than the mojibake repair acts on.

    Built from ftfy's own tables: ligatures, full-/half-width forms, curly quotes, Unicode line/paragraph separators, the control characters it removes,
    C1 controls, terminal escapes and surrogates (the last three never survive
    `_strip_controls`, listed for completeness). Text without any of these and without
    mojibake (`ftfy.badness.is_bad`) comes out of `ftfy.fix_text(text, **FTFY_OPTIONS)` as
    NFC(text) exactly. ('&' is not in it: HTML unescaping is off, see FTFY_OPTIONS.)
    """
    from ftfy import chardata

    codes = set(chardata.LIGATURES) | set(chardata.WIDTH_MAP) | set(chardata.CONTROL_CHARS)
    codes |= {ord(c) for c in "\r\x1b\u0085\u2028\u2029\u02bc"}
    codes |= set(range(0x2018, 0x2020)) | set(range(0x80, 0xA0))
    ranges: list[list[int]] = []
    for c in sorted(codes):
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    cls = "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in ranges)
    return re.compile(f"[{cls}\\ud800-\\udfff]")


_FTFY_GATE: re.Pattern[str] | None = None


def gated_fix_text(text: str) -> str:
    """== ftfy.fix_text(text, **FTFY_OPTIONS), running ftfy only when it can change more
    than the normalisation: a fixer's character is present (`_ftfy_gate`) or the text looks
    like mojibake (`is_bad`, the test ftfy's own encoding fix starts with). A test checks the
    gate character by character against ftfy's fixers and the whole result against ftfy."""
    global _FTFY_GATE
    import ftfy
    from ftfy.badness import is_bad

    if _FTFY_GATE is None:
        _FTFY_GATE = _ftfy_gate()
    if _FTFY_GATE.search(text) or is_bad(text):
        return ftfy.fix_text(text, **FTFY_OPTIONS)
    out = unicodedata.normalize("NFC", text)
    # ftfy loops until stable: NFC can compose characters into a mojibake-looking sequence
    if out != text and (_FTFY_GATE.search(out) or is_bad(out)):
        return ftfy.fix_text(text, **FTFY_OPTIONS)
    return out


def clean_caption(
    alt: str | None, min_chars: int = 5, max_chars: int = 2000, fix_text: bool = True
) -> tuple[str | None, str | None]:
    """(clean caption, None) or (None, rejection reason). `alt` is the attribute's value
    (entities already decoded, once, by whoever read it): nothing here decodes entities."""
    if alt is None:
        return None, NO_ALT
    # bound the work on absurd input before any per-character pass
    if len(alt) > 4 * max_chars + 64:
        return None, CAPTION_TOO_LONG
    text = alt
    if not text.isascii():
        # controls first (tab/bell -> space), so ASCII and non-ASCII text get the same rule;
        # printable text holds no Cc/Cf/Cs/Co/Cn character, so nothing to strip
        if not text.isprintable():
            text = _strip_controls(text)
        if fix_text:
            text = gated_fix_text(text)
        else:
            text = unicodedata.normalize("NFC", text)
    elif not text.isprintable():
        text = _strip_controls(text)
    # == re.sub(r"\s+", " ", text).strip(): str.split and re's \s share one definition
    text = " ".join(text.split())
    if len(text) < min_chars:
        return None, (NO_ALT if not text and not alt.strip() else CAPTION_TOO_SHORT)
    if len(text) > max_chars:
        return None, CAPTION_TOO_LONG
    return text, None

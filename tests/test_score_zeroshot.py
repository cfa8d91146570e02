"""LAION-400M zero-shot tags and drop rules, case by case, plus the word-list toxicity scorer.

Prompt embeddings are built by hand from orthonormal directions so each case states
exactly which prompts an image is close to.
"""

from __future__ import annotations

import numpy as np
import pytest

from laion_spark.score.toxicity import WordListToxicity
from laion_spark.score.zeroshot import (
    NSFW,
    PROMPTS_DIR,
    UNLIKELY,
    UNSURE,
    PromptEmbeddings,
    WordMatcher,
    encode_prompts,
    load_prompt_lists,
    read_list,
    zero_shot_tags,
)

D = 32
E = np.eye(D, dtype=np.float32)
# directions: 0-2 neutral prompts, 3-4 unsafe, 5-6 underage, 7-8 adult, 9 animal, 10-11 not animal
PROMPTS = PromptEmbeddings(
    neutral=E[[0, 1, 2]],
    unsafe=E[[3, 4]],
    underage=E[[5, 6]],
    adult=E[[7, 8]],
    animal=E[[9]],
    not_animal=E[[10, 11]],
)
CHILD = WordMatcher(read_list(PROMPTS_DIR / "child_words.txt"))


ADULT = {"d7": 0.6, "d8": 0.55}  # both adult prompts rank above every underage prompt


def img(**weights: float) -> np.ndarray:
    """An image embedding as a weighted sum of directions: img(d0=1, d3=.5)."""
    v = np.zeros(D, dtype=np.float32)
    for k, w in weights.items():
        v[int(k[1:])] = w
    return v / np.linalg.norm(v)


def tag(v: np.ndarray, caption: str | None = "a photo") -> tuple[str, list[str]]:
    tags, flags = zero_shot_tags(v[None, :], [caption], PROMPTS, CHILD)
    return tags[0], flags[0]


def test_two_neutral_prompts_on_top_is_unlikely():
    assert tag(img(d0=1, d1=0.9, d3=0.2)) == (UNLIKELY, [])


def test_unlikely_skips_the_drop_rules_even_with_child_words():
    # LAION only checks the underage rules for NSFW / UNSURE samples
    assert tag(img(d0=1, d1=0.9, d5=0.8), "a kid playing") == (UNLIKELY, [])


def test_two_unsafe_prompts_on_top_is_nsfw():
    assert tag(img(d3=1, d4=0.9, d0=0.1, d10=0.5, **ADULT)) == (NSFW, [])


def test_one_of_each_is_unsure():
    assert tag(img(d0=1, d3=0.9, d10=0.5, **ADULT)) == (UNSURE, [])


def test_underage_prompt_in_top_two_drops_nsfw():
    t, f = tag(img(d3=1, d4=0.9, d7=0.6, d5=0.5, d10=0.2))  # adult first, underage second
    assert t == NSFW and f == ["drop", "underage_prompt"]


def test_underage_prompt_third_is_not_dropped():
    t, f = tag(img(d3=1, d4=0.9, d7=0.6, d8=0.55, d5=0.5, d10=0.2))
    assert t == NSFW and f == []


def test_underage_prompt_drops_unsure_too():
    t, f = tag(img(d0=1, d3=0.9, d6=0.7, d10=0.2))
    assert t == UNSURE and "underage_prompt" in f and f[0] == "drop"


@pytest.mark.parametrize(
    "caption,dropped",
    [
        ("Young GIRL posing", True),
        ("teen model", True),
        ("two babies", True),
        ("little  boy", True),  # phrase across extra whitespace
        ("kidney beans recipe", False),  # whole words only (LAION's substring test would drop it)
        ("childish font", False),
        ("grown woman", False),
        (None, False),
    ],
)
def test_child_words_in_caption_drop_nsfw(caption, dropped):
    t, f = tag(img(d3=1, d4=0.9, d10=0.2, **ADULT), caption)
    assert t == NSFW
    assert (f == ["drop", "child_words"]) is dropped, f


def test_animal_ranked_first_drops_nsfw():
    t, f = tag(img(d3=1, d4=0.9, d9=0.5, **ADULT))
    assert t == NSFW and f == ["drop", "animal_prompt"]


def test_every_rule_can_fire_together():
    t, f = tag(img(d3=1, d0=0.9, d5=0.6, d9=0.5), "kids")
    assert t == UNSURE and f == ["drop", "underage_prompt", "child_words", "animal_prompt"]


def test_batch_matches_one_by_one_and_empty():
    vs = [img(d0=1, d1=0.9), img(d3=1, d4=0.9, d5=0.95), img(d0=1, d3=0.9, d10=0.5, **ADULT)]
    caps = ["x", "y", "kid"]
    tags, flags = zero_shot_tags(np.stack(vs), caps, PROMPTS, CHILD)
    assert list(zip(tags, flags, strict=True)) == [tag(v, c) for v, c in zip(vs, caps, strict=True)]
    assert zero_shot_tags(np.zeros((0, D)), [], PROMPTS, CHILD) == ([], [])


def test_prompt_files_load_and_encode_with_any_text_encoder():
    lists = load_prompt_lists(PROMPTS_DIR)
    assert len(lists["nsfw_neutral"]) == 19 and len(lists["underage"]) == 4
    rng = np.random.default_rng(0)

    def encode_text(texts):  # any encoder: returns unnormalised rows
        return rng.normal(size=(len(texts), 16)) * 3

    pe = encode_prompts(encode_text, lists)
    assert pe.dim == 16
    assert np.allclose(np.linalg.norm(pe.unsafe, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("a red circle on the left", 0.0),
        ("", 0.0),
        (None, 0.0),
        ("what a stupid picture", 0.7),
        ("STUPID idiot", 0.91),
        ("st0pid", 0.0),  # not a listed word even after folding
        ("1d10t", 0.7),  # leetspeak folded
        ("scunthorpe town hall", 0.0),  # whole words only
        ("kill   yourself", 0.7),  # phrases across whitespace
    ],
)
def test_word_list_toxicity(text, expected):
    tox = WordListToxicity.from_file(PROMPTS_DIR / "toxic_words.txt")
    assert tox.score_one(text) == pytest.approx(expected, abs=1e-6)
    assert tox.model_ref.startswith("wordlist:")


def test_prompt_embeddings_cached_per_model_and_prompt_lists(tmp_path, monkeypatch):
    """A score run keeps the prompt embeddings it encoded, keyed by the model id (which
    carries its weights' digest) and the prompt lists' digest; the next run takes them
    without loading a CLIP model (here none can load), and a changed list misses."""
    from laion_spark.config import load_config
    from laion_spark.score.stage import _prompts
    from laion_spark.score.zeroshot import (
        PromptEmbeddings,
        lists_digest,
        load_prompt_lists,
        prompts_dir,
        save_prompts,
    )

    monkeypatch.setenv("LAION_SPARK_CACHE", str(tmp_path / "cache"))
    cfg = load_config(
        "local", ["embed.model=ViT-B-32", f"embed.pretrained={tmp_path / 'no-such-weights.pt'}"]
    )
    model = "ViT-B-32@0123456789ab"
    got, why = _prompts(cfg, model, None, None)
    assert got is None and "did not load" in why  # nothing cached, no model: absent
    lists = load_prompt_lists(prompts_dir(cfg.score.prompts_dir))
    ref = f"zero-shot:{model}:prompts@{lists_digest(lists)}"
    rng = np.random.default_rng(0)
    pe = PromptEmbeddings(*(rng.normal(size=(k, 8)).astype(np.float32) for k in (3, 4, 2, 2, 5, 6)))
    save_prompts(ref, pe)
    got, why = _prompts(cfg, model, None, None)
    assert why == ref and got is not None
    for a, b in zip(vars(got).values(), vars(pe).values(), strict=True):
        np.testing.assert_array_equal(a, b)
    other, why = _prompts(cfg, "ViT-B-32@ffffffffffff", None, None)  # other weights: a miss
    assert other is None and "did not load" in why

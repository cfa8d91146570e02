"""CLIP-DPO pieces without Spark: settings, chunking, SFT parsing, the pair rules, the
text-heavy detector (measured), the tiny LLaVA and its generate()."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from laion_spark.dpo import select as sel_mod
from laion_spark.dpo import text as textmod
from laion_spark.dpo import textheavy
from laion_spark.dpo.pool import BAD_RECORD, parse_records, pool_id
from laion_spark.dpo.settings import SelectSettings
from laion_spark.settings import ConfigError


def tiny_llava_at(tmp_path_factory) -> str:
    """An untrained tiny LLaVA (model + processor from configs, tokenizer trained with
    `tokenizers`): built once per test session under pytest's tmp dir, no download."""
    from laion_spark.dpo.tiny_llava import build_tiny_llava

    target = tmp_path_factory.getbasetemp() / "tiny-llava-untrained"
    if not (target / "tiny_llava.json").is_file():
        build_tiny_llava(target, steps=0)
    return str(target)


@pytest.fixture(scope="module")
def tiny_llava_dir(tmp_path_factory):
    return tiny_llava_at(tmp_path_factory)


def test_settings_errors_name_the_dotted_key(make_cfg):
    cfg = make_cfg()
    assert cfg.dpo.generate.model == "tiny-llava" and cfg.dpo.score.models == []
    for override, key in [
        ("dpo.generate.top_p=1.5", "dpo.generate.top_p"),
        ("dpo.generate.temperature=0", "dpo.generate.temperature"),
        ("dpo.score.aggregate=median", "dpo.score.aggregate"),
        ("dpo.select.max_length_ratio=0.5", "dpo.select.max_length_ratio"),
        ("dpo.pool.images_fraction=0", "dpo.pool.images_fraction"),
        ("dpo.generate.device=tpu", "dpo.generate.device"),
        ("dpo.select.bogus=1", "dpo.select.bogus"),
        ("dpo.score.models=[{model: tiny-clip, batch_size: 0}]", "dpo.score.models[0].batch_size"),
    ]:
        with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
            make_cfg([override])


# --- chunks ----------------------------------------------------------------------------------
def _count(text: str) -> int:
    return len(text.split())


def test_chunks_keep_every_word_and_fit():
    short = "a red circle on the left."
    assert textmod.chunks(short, _count, 8) == [short]
    long = (
        "a red circle on the left. the background is gray and there is nothing else in it. "
        "supercalifragilisticexpialidocious words follow here"
    )
    pieces = textmod.chunks(long, _count, 5)
    assert all(_count(p) <= 5 for p in pieces)
    assert " ".join(pieces).split() == long.split()  # nothing dropped, nothing reordered
    # sentences are packed whole while they fit
    assert textmod.chunks("one two. three four. five", _count, 4) == [
        "one two. three four.",
        "five",
    ]

    def chars(t: str) -> int:
        return len(t)

    # a single word longer than the context is cut into pieces that fit, not truncated
    assert textmod.chunks("abcdefghij", chars, 4) == ["abcd", "efgh", "ij"]


def test_token_counter_matches_open_clip_tokenizer():
    import open_clip

    from laion_spark.models import tiny_clip

    tiny_clip.register()
    tok = open_clip.get_tokenizer("tiny-clip")
    count, max_tokens = textmod.token_counter(tok)
    assert max_tokens == 14  # context 16 minus start and end
    text = "a red circle on the left. the background is gray. there is also a blue star at the top."
    pieces = textmod.chunks(text, count, max_tokens)
    assert len(pieces) > 1 and all(count(p) <= max_tokens for p in pieces)
    # what the tokenizer would cut off is in the chunks: every chunk's tokens end with EOT
    for p in pieces:
        ids = tok([p])[0].tolist()
        assert ids[count(p) + 1] == tok.eot_token_id


def test_similarity_and_length_ratio():
    assert textmod.similarity("A red circle.", "a red circle") == 1.0
    assert (
        textmod.similarity("a red circle on the left", "there is a red circle on the left") == 1.0
    )
    assert textmod.similarity("a red circle on the left", "a blue circle on the left") < 0.8
    assert textmod.length_ratio("a b", "a b c d") == 2.0


# --- SFT records -----------------------------------------------------------------------------
def test_parse_llava_records():
    records = [
        {
            "id": "000001",
            "image": "coco/1.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is in the picture?"},
                {"from": "gpt", "value": "A red circle."},
                {"from": "human", "value": "Where?"},
                {"from": "gpt", "value": "On the left."},
            ],
        },
        {"id": "t", "conversations": [{"from": "human", "value": "text only"}]},
        {"id": "bad", "image": "x.jpg", "conversations": "nope"},
        {
            "id": "escape",
            "image": "../../etc/passwd",
            "conversations": [{"from": "human", "value": "hi"}],
        },
        {
            "id": "multi",
            "image": ["a.jpg", "b.jpg"],
            "conversations": [{"from": "human", "value": "hi"}],
        },
        "not an object",
    ]
    rows, skipped = parse_records(records)
    assert skipped == {"text_only": 1}
    by_id = {r["original_id"]: r for r in rows}
    first = by_id["000001"]
    assert first["instruction"] == "What is in the picture?"
    assert first["reference"] == "A red circle."
    assert first["status"] is None and first["image_ref"] == "coco/1.jpg"
    assert first["pool_id"] == pool_id(
        "llava_json", "000001", "coco/1.jpg", "What is in the picture?"
    )
    assert by_id["bad"]["status"] == BAD_RECORD and "conversations" in by_id["bad"]["error_message"]
    assert "leaves the image folder" in by_id["escape"]["error_message"]
    assert "several images" in by_id["multi"]["error_message"]
    assert by_id["#5"]["status"] == BAD_RECORD
    # stable: the same file gives the same keys
    assert [r["pool_id"] for r in parse_records(records)[0]] == [r["pool_id"] for r in rows]


# --- pair rules ------------------------------------------------------------------------------
def _group(responses: list[tuple[str, float]], template: str = "short") -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "candidate_id": f"c{i}",
                "pool_id": "p",
                "template": template,
                "prompt": "describe",
                "response": text,
                "score": score,
                "model_id": "m",
                "score_chunks": 1,
                "image_sha256": "h",
                "image_ref": "x.jpg",
            }
            for i, (text, score) in enumerate(responses)
        ]
    )


def test_select_rules_each_remove_what_they_should():
    group = _group(
        [
            ("a red circle on the left.", 0.90),  # c0 faithful
            ("a blue circle on the left.", 0.50),  # c1 colour wrong
            ("A red circle, on the left", 0.89),  # c2 same content as c0
            ("a red circle on the left. the background is gray and nothing else is there.", 0.70),
            ("a red square on the left.", 0.10),  # c4 below the chosen minimum as chosen only
        ]
    )
    rules = SelectSettings(min_margin=0.05, max_length_ratio=1.6, max_pairs_per_image=2)
    pairs = sel_mod.select_pairs(group, rules, min_chosen=0.6)
    by = {(p["chosen_id"], p["rejected_id"]): p for p in pairs}
    assert len(pairs) == 10  # every two of five responses, once
    assert by[("c0", "c2")]["removed_by"] == "min_margin"  # 0.01 apart
    assert by[("c0", "c3")]["removed_by"] == "length_ratio"
    assert by[("c1", "c4")]["removed_by"] == "min_chosen_score"
    assert by[("c2", "c1")]["removed_by"] is None or by[("c2", "c1")]["removed_by"] == "cap"
    kept = [p for p in pairs if p["removed_by"] is None]
    assert len(kept) == 2
    # largest margin first, then a pair that reuses neither response
    assert (kept[0]["chosen_id"], kept[0]["rejected_id"]) == ("c0", "c4")
    assert {kept[1]["chosen_id"], kept[1]["rejected_id"]} == {"c2", "c1"}
    assert all(p["margin"] > 0 and p["chosen_score"] >= p["rejected_score"] for p in pairs)
    # near-identical: content words equal
    ident = _group([("a red circle.", 0.9), ("A red circle", 0.5)])
    (p,) = sel_mod.select_pairs(ident, rules, min_chosen=0.0)
    assert p["removed_by"] == "near_identical"
    # text-heavy images lose every pair; when not enforced, the pair carries the flag
    assert all(
        p["removed_by"] == "text_heavy"
        for p in sel_mod.select_pairs(group, rules, min_chosen=0.0, text_heavy=True)
    )
    lenient = SelectSettings(drop_text_heavy=False, max_pairs_per_image=99)
    flagged = sel_mod.select_pairs(group, lenient, min_chosen=0.0, text_heavy=True)
    assert all("text_heavy" in p["flags"] for p in flagged)
    # different templates are never paired
    two = pd.concat([_group([("a b c", 0.9)], "short"), _group([("d e f", 0.1)], "detailed")])
    two["candidate_id"] = ["x", "y"]
    assert sel_mod.select_pairs(two, rules, min_chosen=0.0) == []


def test_ensemble_scores_one_model_is_its_cosine_and_zscore_averages():
    raw = pd.Series([{"a": 0.2, "b": 10.0}, {"a": 0.4, "b": 30.0}, {"a": 0.6, "b": 20.0}])
    stats = {"a": (0.4, 0.2), "b": (20.0, 10.0)}
    z = sel_mod.ensemble_scores(raw, stats, "zscore", "a")
    # z of a: -1, 0, 1; z of b: -1, 1, 0 -> means -1, 0.5, 0.5 -> on a's scale
    assert np.allclose(z, [0.2, 0.5, 0.5])
    one = sel_mod.ensemble_scores(pd.Series([{"a": 0.3}]), {"a": (0.1, 0.5)}, "zscore", "a")
    assert math.isclose(one[0], 0.3, rel_tol=1e-6)
    assert np.allclose(sel_mod.ensemble_scores(raw, stats, "none", "a"), [5.1, 15.2, 10.3])


# --- text-heavy images -----------------------------------------------------------------------
def test_text_statistic_separates_text_from_scenes(capsys):
    data = textheavy.evaluation_set(per_kind=12, seed=3)
    kinds = [k for k, _, _ in data]
    labels = np.array([t for _, t, _ in data])
    scores = textheavy.statistic_scores([Image.open(io.BytesIO(b)) for _, _, b in data])
    m = textheavy.measure(scores, labels, kinds, threshold=0.25)
    print(f"text-heavy statistic at 0.25: {m}")
    assert m["precision"] >= 0.95 and m["recall"] >= 0.85
    assert m["flagged_document"] == 1.0
    assert m["flagged_scene"] == m["flagged_clutter"] == m["flagged_texture"] == 0.0


# --- the tiny LLaVA --------------------------------------------------------------------------
def test_tiny_llava_loads_and_samples(tiny_llava_dir):
    from laion_spark.demo.synthetic import make_samples
    from laion_spark.dpo.settings import GenerateSettings
    from laion_spark.models.vlm import load_vlm

    vlm = load_vlm(GenerateSettings(model=tiny_llava_dir, device="cpu"))
    assert type(vlm.model).__name__ == "LlavaForConditionalGeneration"
    assert vlm.model_id.startswith(f"{tiny_llava_dir.rsplit('/', 1)[-1]}@")
    assert vlm.prompt_text("Describe the image.") == "USER: <image> Describe the image. ASSISTANT:"
    images = [s.image(64) for s in make_samples(3, seed=2)]
    kw = dict(n=2, temperature=1.0, top_p=0.9, max_new_tokens=6, seed=5)
    out = vlm.generate(images, ["Describe the image."] * 3, **kw)
    assert [len(o) for o in out] == [2, 2, 2]
    assert all(isinstance(t, str) for o in out for t in o)
    assert out == vlm.generate(images, ["Describe the image."] * 3, **kw)  # seeded
    with pytest.raises(ValueError, match="cannot decode"):
        vlm.decode(b"not an image")


def test_cached_tiny_llava_has_one_id_on_driver_and_executors(
    tiny_llava_dir, tmp_path, monkeypatch
):
    """Executors get the cache folder the driver resolved; both must record `tiny-llava@…`
    (the demo failed with tiny-llava-v1@… vs tiny-llava@… before `name` was shipped)."""
    import shutil

    from laion_spark.dpo import tiny_llava
    from laion_spark.dpo.generate import worker_config
    from laion_spark.dpo.settings import GenerateSettings
    from laion_spark.models.vlm import load_vlm, model_name

    monkeypatch.setenv("LAION_SPARK_CACHE", str(tmp_path))
    shutil.copytree(tiny_llava_dir, tiny_llava.cache_dir())  # built: no training here
    gen = GenerateSettings(model="tiny-llava", device="cpu")
    driver = load_vlm(gen)
    executor_cfg = GenerateSettings(**worker_config(gen))
    assert executor_cfg.model == str(tiny_llava.cache_dir())
    executor = load_vlm(executor_cfg, name=model_name(gen.model))
    assert driver.model_id == executor.model_id and driver.model_id.startswith("tiny-llava@")

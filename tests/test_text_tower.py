"""Multilingual text towers without Spark: the M-CLIP layout on disk, routing, the CLI.

The tiny tower (tiny-mclip) is distilled from tiny-clip once per machine and cached, like
tiny-clip itself; the towers built here are random (layout tests) or trained for a few steps.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from laion_spark.config import load_config
from laion_spark.demo.synthetic import CAPTION_LANGUAGES, make_samples, parallel_captions
from laion_spark.embed.distill import tiny_encoder, train_tokenizer
from laion_spark.embed.settings import EmbedSettings
from laion_spark.models.clip import load_clip
from laion_spark.models.text_tower import (
    MCLIP_THRESHOLD,
    TINY_TOWER,
    build_module,
    encode_queries,
    encode_routed,
    load_text_tower,
    load_text_towers,
    query_group,
    route_group,
    save_text_tower,
)
from laion_spark.settings import ConfigError

TOWERS = f"embed.text_towers={{multi: {TINY_TOWER}, nolang: {TINY_TOWER}}}"
TEXTS = ["un cercle rouge à gauche", "ein blaues Quadrat oben", "жёлтая звезда справа", ""]


@pytest.fixture(scope="module")
def clip():
    return load_clip(EmbedSettings(), device="cpu")


@pytest.fixture(scope="module")
def towers(clip):
    cfg = load_config("local", [TOWERS, "embed.device=cpu"])
    return load_text_towers(cfg.embed, clip)


def _random_tower(out_dim: int = 64):
    caps = [c for _, c, _ in parallel_captions(200, seed=1)]
    tok = train_tokenizer(caps, vocab_size=200)
    torch.manual_seed(0)
    return build_module(tiny_encoder(tok), out_dim).eval(), tok


def _direct(module, tok, texts):
    t = tok(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.inference_mode():
        f = module(t["input_ids"], t["attention_mask"])
    return torch.nn.functional.normalize(f, dim=-1).numpy()


def test_tower_on_disk_in_mclip_layout_gives_the_built_towers_embeddings(tmp_path):
    module, tok = _random_tower()
    want = _direct(module, tok, TEXTS)

    ours = save_text_tower(module, tok, str(tmp_path / "ours"), {"thresholds": {"multi": 0.5}})
    conf = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert conf["model_type"] == "M-CLIP" and conf["numDims"] == 64
    assert conf["transformerDimensions"] == 64
    a = load_text_tower(ours, "cpu")
    np.testing.assert_allclose(a.encode_text(TEXTS), want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(a.encode_text(TEXTS), axis=1), 1.0, atol=1e-5)
    assert a.threshold("multi") == 0.5 and a.threshold("nolang") == 0.5

    # the layout of released M-CLIP weights: config.json naming only modelBase, the encoder's
    # config beside it, pytorch_model.bin with the position_ids buffer older versions saved
    rel = tmp_path / "released"
    tok.save_pretrained(str(rel))
    module.transformer.config.save_pretrained(str(rel / "encoder"))
    (rel / "config.json").write_text(
        json.dumps(
            {
                "model_type": "M-CLIP",
                "modelBase": "xlm-roberta-tiny",
                "transformerDimensions": 64,
                "numDims": 64,
            }
        )
    )
    state = dict(module.state_dict())
    state["transformer.embeddings.position_ids"] = torch.arange(34).unsqueeze(0)
    torch.save(state, rel / "pytorch_model.bin")
    b = load_text_tower(str(rel), "cpu")
    np.testing.assert_allclose(b.encode_text(TEXTS), want, atol=1e-5)
    # same weights + tokenizer -> same digest; the name is the encoder's
    assert a.model_id.split("@")[1] == b.model_id.split("@")[1]
    assert b.model_id.startswith("mclip-xlm-roberta-tiny@")
    assert b.threshold("multi") == MCLIP_THRESHOLD  # no sidecar: LAION's M-CLIP threshold

    # weights that do not fit fail naming the key
    bad = tmp_path / "bad"
    tok.save_pretrained(str(bad))
    (bad / "config.json").write_text((rel / "config.json").read_text())
    module.transformer.config.save_pretrained(str(bad / "encoder"))
    torch.save(
        {k: v for k, v in state.items() if "LinearTransformation" not in k},
        bad / "pytorch_model.bin",
    )
    with pytest.raises(ConfigError, match=r"embed\.text_towers\.multi: .*LinearTransformation"):
        load_text_tower(str(bad), "cpu", key="embed.text_towers.multi")


def test_config_and_tower_checks_name_the_key(tmp_path, clip):
    with pytest.raises(ConfigError, match=r"embed\.text_towers\.en: a tower serves"):
        load_config("local", ["embed.text_towers={en: somewhere}"])
    with pytest.raises(ConfigError, match=r"embed\.text_towers\.multi: .*not a text tower"):
        load_text_towers(EmbedSettings(text_towers={"multi": str(tmp_path)}), clip)
    module, tok = _random_tower(out_dim=32)
    small = save_text_tower(module, tok, str(tmp_path / "small"))
    with pytest.raises(ConfigError, match=r"embed\.text_towers\.nolang: the tower outputs 32"):
        load_text_towers(EmbedSettings(text_towers={"nolang": small}), clip)
    module, tok = _random_tower()
    other = save_text_tower(
        module, tok, str(tmp_path / "other"), {"teacher_model_id": "ViT-B-32@0123456789ab"}
    )
    with pytest.raises(ConfigError, match=r"embed\.text_towers\.multi: .*distilled from ViT-B"):
        load_text_towers(EmbedSettings(text_towers={"multi": other}), clip)


def test_routing_by_group_same_image_english_and_french(clip, towers):
    """An English and a French caption of one image take different towers; both score high
    against the image, the French one only through the multilingual tower."""
    tower = towers["multi"]
    rng = random.Random(5)
    samples = make_samples(40, seed=41)
    img = clip.encode_images([s.jpeg(64) for s in samples])
    en = [s.attrs.caption(rng) for s in samples]
    fr = [s.attrs.caption_in("fr", rng) for s in samples]
    emb, ids = encode_routed(clip, towers, en + fr, ["en"] * 40 + ["multi"] * 40)
    assert ids == [clip.model_id] * 40 + [tower.model_id] * 40
    sim_en = (img * emb[:40]).sum(1)
    sim_fr = (img * emb[40:]).sum(1)
    sim_fr_clip = (img * clip.encode_text(fr)).sum(1)  # the French through CLIP's own tower
    print(
        f"median sim en={np.median(sim_en):.3f} fr={np.median(sim_fr):.3f} "
        f"fr-through-clip={np.median(sim_fr_clip):.3f}"
    )
    assert (sim_en >= clip.thresholds["en"]).mean() >= 0.9
    assert (sim_fr >= tower.threshold("multi")).mean() >= 0.9
    assert (sim_fr_clip >= clip.thresholds["multi"]).mean() <= 0.2


def test_queries_route_by_detected_or_given_language(clip, towers):
    cfg = load_config("local", [TOWERS, "embed.device=cpu"])
    assert query_group("ein roter Kreis links", None, cfg) == "multi"
    assert query_group("a red circle on the left", None, cfg) == "en"
    assert query_group("rouge", "fr", cfg) == "multi"
    assert query_group("anything", "en", cfg) == "en"
    assert query_group("anything", "nolang", cfg) == "nolang"
    assert route_group(None, None, {"en"}) == "nolang" and route_group("en", "de", {"en"}) == "en"
    q = encode_queries(cfg, ["un cercle rouge à gauche", "a red circle on the left"])
    np.testing.assert_allclose(
        q[0], towers["multi"].encode_text(["un cercle rouge à gauche"])[0], atol=1e-5
    )
    np.testing.assert_allclose(q[1], clip.encode_text(["a red circle on the left"])[0], atol=1e-5)
    # given language wins over detection: an English query forced through the tower
    forced = encode_queries(cfg, ["a red circle on the left"], ["de"])
    np.testing.assert_allclose(
        forced[0], towers["multi"].encode_text(["a red circle on the left"])[0], atol=1e-5
    )
    # no tower configured: CLIP's text tower for every query, as before
    plain = encode_queries(load_config("local", ["embed.device=cpu"]), ["un cercle rouge"])
    np.testing.assert_allclose(plain[0], clip.encode_text(["un cercle rouge"])[0], atol=1e-6)


def test_train_text_tower_command(tmp_path, clip):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from laion_spark.cli.main import main

    pairs = parallel_captions(400, seed=9, languages=CAPTION_LANGUAGES)
    pq.write_table(
        pa.table({"en": [p[0] for p in pairs], "text": [p[1] for p in pairs]}),
        tmp_path / "pairs.parquet",
    )
    out = tmp_path / "tower"
    rc = main(
        [
            "train-text-tower",
            "--set", f"workdir={tmp_path / 'wd'}",
            "--set", "embed.device=cpu",
            "--pairs", str(tmp_path / "pairs.parquet"),
            "--out", str(out),
            "--steps", "40",
            "--vocab-size", "300",
            "--device", "cpu",
            "--threads", "1",
        ]
    )  # fmt: skip
    assert rc == 0
    tower = load_text_tower(str(out), "cpu")
    assert tower.meta["teacher_model_id"] == clip.model_id
    assert tower.meta["pairs"] == 400 and tower.meta["train"]["steps"] == 40
    assert tower.meta["threshold_source"] == "teacher"
    assert tower.threshold("multi") == pytest.approx(clip.thresholds["multi"])
    assert 0 <= tower.meta["eval"]["val_mse"] < 1.0
    # it loads as a configured tower for this embed model
    got = load_text_towers(EmbedSettings(text_towers={"multi": str(out)}), clip)
    assert got["multi"].model_id == tower.model_id

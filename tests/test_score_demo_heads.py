"""The demo's score heads: trained once on generated data, honestly labelled, held-out
accuracy asserted; in the score stage they recover planted rates, and safe mode (through
the Searcher) never returns the stand-in unsafe category."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import functions as F

from laion_spark.demo.run import DEMO_RATES
from laion_spark.demo.synthetic import make_samples
from laion_spark.ids import sample_id
from laion_spark.models.heads import load_head
from laion_spark.models.watermark import load_watermark_model
from laion_spark.score import demo_heads
from laion_spark.tables import Tables, spark_schema


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from laion_spark.config import load_config
    from laion_spark.models.clip import load_clip

    cfg = load_config("local", [f"workdir={tmp_path_factory.mktemp('wd')}"])
    return load_clip(cfg.embed)


@pytest.fixture(scope="module")
def heads(clip):
    return demo_heads.ensure_demo_heads(None, clip)  # trained once per cache, then loaded


def test_heads_cached_honest_and_accurate(heads, clip):
    again = demo_heads.ensure_demo_heads(None, clip)
    assert not again.trained and again.nsfw == heads.nsfw
    ev = heads.metrics
    # held-out images of another seed than training
    assert ev["watermark"]["accuracy"] >= 0.95 and ev["watermark"]["threshold"] == 0.8
    assert ev["nsfw"]["accuracy"] >= 0.95
    assert ev["aesthetic"]["side_accuracy"] >= 0.85 and ev["aesthetic"]["r2"] >= 0.5
    # the stand-in is labelled as one in the head file and the sidecar
    nsfw = load_head(heads.nsfw, "nsfw")
    assert "not an NSFW detector" in nsfw.description and nsfw.in_dim == clip.dim
    assert "not an NSFW detector" in heads.meta["notes"]["nsfw"]
    assert "not human aesthetic ratings" in load_head(heads.aesthetic, "aesthetic").description

    # the saved classifier loads as LAION's does and holds up on images it never saw
    wm = load_watermark_model(heads.watermark_image, heads.watermark_arch, heads.watermark_size)
    fresh = make_samples(300, seed=5_000_011, watermark_rate=0.5, low_quality_rate=0.3)
    p = wm.predict_bytes([s.jpeg(96) for s in fresh])
    y = np.array([s.watermark for s in fresh])
    assert ((p > 0.8) == y).mean() >= 0.95


def test_standin_head_flags_every_planted_unsafe_sample_of_the_demo(heads, clip):
    """The default 200-page demo and two other seeds, made exactly as the demo makes them
    (its generator and rates, 96-px JPEGs from its server, the download stage's resize and
    re-encode): every planted stand-in unsafe sample scores above safe mode's threshold."""
    from laion_spark.config import load_config
    from laion_spark.demo.run import DEMO_SEED, demo_config

    cfg = demo_config(load_config("local"))
    thr = cfg.serve.punsafe_max  # what safe mode hides above (index/search.py)
    assert thr == 0.5
    for seed in (DEMO_SEED, 1, 2):
        samples, images = demo_heads.demo_images(200, seed, cfg.download)
        assert len(samples) > 550 and all(images)  # the 200-page demo's ~600 images
        m = demo_heads.standin_metrics(clip, heads.nsfw, samples, images, thr)
        assert m["unsafe"] >= 40, m
        assert m["missed"] == [] and m["recall"] == 1.0, (seed, m)
        # safe samples flagged: measured 0.4-0.7 % on these seeds, 0.2 % on 2000 held out
        assert m["false_positive_rate"] <= 0.02, (seed, m)


@pytest.mark.slow
def test_score_stage_recovers_planted_rates_and_safe_mode(spark, make_cfg, heads, clip):
    from laion_spark.index.merge import merge_index
    from laion_spark.index.search import Searcher
    from laion_spark.index.stage import run as run_index
    from laion_spark.score.stage import run as run_score

    cfg = make_cfg()
    tables = Tables(spark, cfg)
    samples = make_samples(120, seed=424_242, **DEMO_RATES)
    urls = [f"http://127.0.0.1:9/img/{s.index}.jpg" for s in samples]
    sids = [sample_id(u, s.caption) for u, s in zip(urls, samples, strict=True)]
    jpgs = [s.jpeg(96) for s in samples]
    emb = clip.encode_images(jpgs)
    rows = list(zip(sids, urls, [s.caption for s in samples], jpgs, emb, strict=True))
    tables.upsert(
        spark.createDataFrame(
            [(s, u, c, "en") for s, u, c, _, _ in rows],
            spark_schema("candidates", ["sample_id", "url", "text", "language"]),
        ),
        "candidates",
    )
    tables.upsert(
        spark.createDataFrame(
            [(s, u, "success", j) for s, u, _, j, _ in rows],
            spark_schema("images", ["sample_id", "url", "status", "image"]),
        ),
        "images",
    )
    tables.upsert(
        spark.createDataFrame(
            [(s, clip.model_id, [float(v) for v in e], "ok") for s, _, _, _, e in rows],
            spark_schema("embeddings", ["sample_id", "model_id", "image_embedding", "status"]),
        ),
        "embeddings",
    )

    demo_heads.configure_demo_heads(cfg, clip)
    assert cfg.score.watermark_image_model == heads.watermark_image
    res = run_score(spark, cfg, tables, clip=clip)
    assert res.error is None and res.rows_out == len(samples)
    assert "absent" not in res.notes or not {"nsfw", "watermark", "aesthetic"} & set(
        res.notes["absent"].split(",")
    )
    got = {r["sample_id"]: r for r in tables.read("scores").collect()}
    assert set(got) == set(sids)
    for s in sids:
        r = got[s]
        assert None not in (r["punsafe"], r["pwatermark"], r["aesthetic"])
        assert r["score_models"]["watermark"].startswith("watermark-image:test_efficientnet")

    unsafe = np.array([s.unsafe for s in samples])
    wmark = np.array([s.watermark for s in samples])
    low = np.array([s.aesthetic < 5.5 for s in samples])
    f_nsfw = np.array(["nsfw" in got[s]["flags"] for s in sids])
    f_wm = np.array(["watermark" in got[s]["flags"] for s in sids])
    aest = np.array([got[s]["aesthetic"] for s in sids])
    # planted rates recovered within 0.05 absolute; per sample >= 90% agreement
    assert unsafe.sum() >= 10 and wmark.sum() >= 15 and low.sum() >= 15
    assert abs(f_nsfw.mean() - unsafe.mean()) <= 0.05 and (f_nsfw == unsafe).mean() >= 0.9
    assert abs(f_wm.mean() - wmark.mean()) <= 0.05 and (f_wm == wmark).mean() >= 0.9
    assert ((aest < 5.5) == low).mean() >= 0.85 and aest[low].mean() < aest[~low].mean() - 2

    # safe mode through the Searcher: a stand-in unsafe sample comes back only where the
    # head missed it (none on the demo's seeds, see docs/score.md); off: they do
    assert run_index(spark, cfg, tables).error is None
    assert merge_index(spark, cfg, tables).error is None
    searcher = Searcher.open(None, cfg)
    unsafe_ids = {s for s, u in zip(sids, unsafe, strict=True) if u}
    missed = {s for s, u, f in zip(sids, unsafe, f_nsfw, strict=True) if u and not f}
    assert len(missed) <= 0.1 * len(unsafe_ids)
    for i in np.flatnonzero(unsafe & f_nsfw)[:3]:
        q = np.asarray(emb[i], dtype=np.float32)
        safe = searcher.search(q, k=len(sids), safe_mode=True, dedup=False)
        assert len(safe) == len(sids) - f_nsfw.sum()  # everything else is still found
        assert all(h["punsafe"] <= 0.5 for h in safe)
        assert {h["sample_id"] for h in safe} & unsafe_ids <= missed
        off = searcher.search(q, k=len(sids), safe_mode=False, dedup=False)
        assert off[0]["sample_id"] == sids[i]
        assert {h["sample_id"] for h in off} >= unsafe_ids
    scored_unsafe = tables.read("scores").where(F.col("punsafe") > 0.5).count()
    assert scored_unsafe == f_nsfw.sum()

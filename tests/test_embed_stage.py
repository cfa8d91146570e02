"""EMBED stage + the curate stage's CLIP filter on real Spark/Delta with the real tiny-clip model.

The images table is built straight from generated samples (JPEG bytes), independent of the
download stage; a fraction of the captions are deliberately wrong (mismatch_rate).
"""

from __future__ import annotations

import numpy as np
import pytest

from laion_spark.curate.stage import run as curate
from laion_spark.demo.synthetic import make_samples
from laion_spark.embed.stage import FAILED_DECODE, SUCCESS, run
from laion_spark.ids import sample_id
from laion_spark.models.clip import load_clip

N = 160
MISMATCH = 0.3


def _write_tables(spark, tables, samples, bad: int = 2):
    """candidates + images rows for `samples`, plus `bad` undecodable and one failed download."""
    cands, imgs = [], []
    for s in samples:
        url = f"http://127.0.0.1/img/{s.index}.jpg"
        sid = sample_id(url, s.caption)
        group = "en" if s.index % 4 else "multi"  # every 4th sample in the multilingual group
        cands.append((sid, url, s.caption, group))
        imgs.append((sid, url, "success", None, s.jpeg(64), 64, 64, "jpeg"))
    for i in range(bad):
        url = f"http://127.0.0.1/bad/{i}.jpg"
        sid = sample_id(url, "broken image")
        cands.append((sid, url, "broken image", "en"))
        imgs.append((sid, url, "success", None, b"\xff\xd8 not really a jpeg" * i, 64, 64, "jpeg"))
    url = "http://127.0.0.1/missing.jpg"
    sid = sample_id(url, "never downloaded")
    cands.append((sid, url, "never downloaded", "en"))
    imgs.append((sid, url, "failed_to_download", "HTTP 404", None, None, None, None))
    tables.upsert(
        spark.createDataFrame(
            cands, "sample_id string, url string, text string, language_group string"
        ),
        "candidates",
    )
    tables.upsert(
        spark.createDataFrame(
            imgs,
            "sample_id string, url string, status string, error_message string, image binary, "
            "width int, height int, format string",
        ),
        "images",
    )
    return {c[0]: s for c, s in zip(cands, samples, strict=False)}


@pytest.fixture(scope="module")
def clip():
    from laion_spark.embed.settings import EmbedSettings

    return load_clip(EmbedSettings())


def test_embed_stage_matches_direct_model_and_filter_removes_mismatches(spark, make_cfg, clip):
    from laion_spark.tables import Tables

    cfg = make_cfg(["embed.batch_size=32", "embed.arrow_batch_size=50"])
    tables = Tables(spark, cfg)
    samples = make_samples(N, seed=11, mismatch_rate=MISMATCH)
    by_id = _write_tables(spark, tables, samples)

    res = run(spark, cfg, tables)
    assert res.rows_in == N + 2  # failed download is not embedded
    assert res.by_status == {SUCCESS: N, FAILED_DECODE: 2}
    assert res.notes["model_id"] == clip.model_id

    rows = tables.read("embeddings").collect()
    assert len(rows) == N + 2
    bad = [r for r in rows if r["status"] == FAILED_DECODE]
    assert all(r["image_embedding"] is None and r["error_message"] for r in bad)
    good = sorted((r for r in rows if r["status"] == SUCCESS), key=lambda r: r["sample_id"])
    ss = [by_id[r["sample_id"]] for r in good]
    # the Spark stage gives the same vectors as calling the model directly
    want_img = clip.encode_images([s.jpeg(64) for s in ss])
    want_txt = clip.encode_text([s.caption for s in ss])
    got_img = np.array([r["image_embedding"] for r in good], np.float32)
    got_txt = np.array([r["text_embedding"] for r in good], np.float32)
    np.testing.assert_allclose(got_img, want_img, atol=1e-4)
    np.testing.assert_allclose(got_txt, want_txt, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got_img, axis=1), 1.0, atol=1e-4)
    sims = np.array([r["similarity"] for r in good])
    np.testing.assert_allclose(sims, (want_img * want_txt).sum(1), atol=1e-4)
    assert {r["model_id"] for r in rows} == {clip.model_id}

    # re-running is a no-op: nothing pending, table unchanged
    again = run(spark, cfg, tables)
    assert again.rows_in == 0 and again.rows_out == 0
    assert tables.read("embeddings").count() == N + 2

    # CLIP filter with the model's calibrated threshold removes the mismatched captions
    fres = curate(spark, cfg, tables, filters=["clip_filter"])
    kept = {
        r["sample_id"] for r in tables.read("subsets").where("subset = 'clip_filter'").collect()
    }
    assert fres.by_status["clip_filter"] == len(kept)
    notes = fres.notes
    assert notes["clip_filter_kept_en"] + notes["clip_filter_kept_multi"] == len(kept)
    assert sum(v for k, v in notes.items() if "_kept_" in k or "_removed_" in k) == N
    assert notes["clip_filter_threshold_en"] == round(clip.thresholds["en"], 4)
    removed = {sid for sid in by_id if sid not in kept}
    mismatched = {sid for sid, s in by_id.items() if s.mismatched}
    assert len(mismatched) > 25
    tp = len(removed & mismatched)
    precision, recall = tp / max(1, len(removed)), tp / len(mismatched)
    print(f"clip filter removal precision={precision:.3f} recall={recall:.3f}")
    assert precision >= 0.8 and recall >= 0.8
    assert all(r["repeat"] == 1 for r in tables.read("subsets").collect())

    # re-running the filter changes nothing
    again_f = curate(spark, cfg, tables, filters=["clip_filter"])
    assert again_f.by_status == fres.by_status
    assert tables.read("subsets").count() == len(kept)

    # a stricter multilingual threshold drops the multi group from the subset (per-group rule)
    thr_en = clip.thresholds["en"]
    strict = make_cfg([f"curate.clip_thresholds={{en: {thr_en}, '*': 1.0}}"], workdir=cfg.workdir)
    sres = curate(spark, strict, Tables(spark, strict), filters=["clip_filter"])
    assert "clip_filter_kept_multi" not in sres.notes
    assert sres.notes["clip_filter_kept_en"] == notes["clip_filter_kept_en"]
    kept2 = {r["sample_id"] for r in tables.read("subsets").collect()}
    assert kept2 == {sid for sid in kept if by_id[sid].index % 4}


def test_embed_stage_is_incremental(spark, make_cfg, clip):
    from laion_spark.tables import Tables

    cfg = make_cfg()
    tables = Tables(spark, cfg)
    first = make_samples(20, seed=21)
    _write_tables(spark, tables, first, bad=0)
    assert run(spark, cfg, tables).by_status == {SUCCESS: 20}
    more = make_samples(30, seed=22)[20:]  # indices 20..29: new urls -> new sample ids
    _write_tables(spark, tables, more, bad=0)
    res = run(spark, cfg, tables)
    assert res.rows_in == 10 and res.by_status == {SUCCESS: 10}
    assert tables.read("embeddings").count() == 30


def test_model_batches_span_arrow_batches_in_order(clip):
    """Arrow batches of 5, 7 and 1 rows (cut by bytes, as `embed.arrow_batch_mb` makes Spark
    cut them) become model batches of `batch_size` rows: every row once, in order, each
    embedding the model's own."""
    import pyarrow as pa

    from laion_spark.embed.settings import EmbedSettings
    from laion_spark.embed.stage import BatchEmbedder

    samples = make_samples(13, seed=4)
    rows = [(f"s{i}", s.jpeg(64), s.caption) for i, s in enumerate(samples)]
    cuts = [(0, 5), (5, 12), (12, 13)]
    batches = [
        pa.record_batch(
            [pa.array([r[k] for r in rows[a:b]]) for k in range(3)],
            names=["sample_id", "image", "text"],
        )
        for a, b in cuts
    ]
    emb = BatchEmbedder(clip, EmbedSettings(batch_size=4))
    try:
        outs = list(emb.run(iter(batches)))
    finally:
        emb.close()
    assert [len(b) for b in outs] == [4, 4, 4, 1]  # full model batches across the cuts
    out = pa.Table.from_batches(outs)
    assert out.column("sample_id").to_pylist() == [r[0] for r in rows]
    assert set(out.column("status").to_pylist()) == {SUCCESS}
    import torch

    direct = clip.encode_image_tensor(torch.stack([clip.decode(r[1]) for r in rows]))
    got = np.array(out.column("image_embedding").to_pylist(), np.float32)
    assert np.allclose(got, direct, atol=1e-5)


def test_large_jpeg_decodes_reduced_and_embeds_the_same(clip):
    """A JPEG far larger than the model's input is decoded at a DCT scale (shorter side
    still >= clip.decode_side); its embedding stays that of the full decode."""
    import io

    from PIL import Image

    from laion_spark.models.clip import decode_rgb

    s = make_samples(1, seed=8)[0]
    small = Image.open(io.BytesIO(s.jpeg(64))).convert("RGB")
    buf = io.BytesIO()
    small.resize((2400, 1800), Image.BICUBIC).save(buf, "JPEG", quality=92)
    big = buf.getvalue()
    side = clip.decode_side
    assert side >= 256
    reduced = decode_rgb(big, clip.max_image_pixels, min_side=side)
    assert min(reduced.size) >= side and reduced.size[0] < 2400  # 1/2 or 1/4 of 2400 x 1800
    full = decode_rgb(big, clip.max_image_pixels)
    assert full.size == (2400, 1800)
    # an image already near the input size is decoded whole
    assert decode_rgb(s.jpeg(64), clip.max_image_pixels, min_side=side).size == (64, 64)
    a = clip.encode_image_tensor(clip.preprocess(reduced)[None])
    b = clip.encode_image_tensor(clip.preprocess(full)[None])
    assert float((a * b).sum()) > 0.99


def test_redo_check_on_local_tables_matches_spark(spark, make_cfg, monkeypatch):
    """The delta-rs check for rows to redo answers as the Spark one, row kind by row kind."""
    from seeding import seed_rows

    from laion_spark.embed import stage
    from laion_spark.tables import Tables

    tables = Tables(spark, make_cfg())
    cols = "sample_id model_id status text_model_id"

    def both() -> tuple[bool, bool]:
        local = stage._has_rows_to_redo(tables, None, "m@1", towers=False)
        with monkeypatch.context() as m:  # the same question through Spark
            m.setattr(tables, "local", lambda name: False)
            far = stage._has_rows_to_redo(tables, None, "m@1", towers=False)
        return local, far

    assert both() == (False, False)  # no table yet
    seed_rows(tables, "embeddings", cols, [("a", "m@1", SUCCESS, None), ("b", "m@2", "x", None)])
    seed_rows(tables, "embeddings", cols, [("c", "m@1", FAILED_DECODE, "m@1")])
    assert both() == (False, False)  # final rows of m@1; m@2's row is not its business
    seed_rows(tables, "embeddings", cols, [("d", "m@1", SUCCESS, "tower@9")])
    assert both() == (True, True)  # made by a tower the config no longer routes to
    tables = Tables(spark, make_cfg(workdir=tables.cfg.workdir + "-2"))
    seed_rows(tables, "embeddings", cols, [("e", "m@1", None, None)])
    assert both() == (True, True)  # no status: not final


@pytest.mark.parametrize("towers", [{}, {"multi": "tower@1"}])
def test_pending_count_on_local_tables_matches_spark(spark, make_cfg, towers):
    """The delta-rs count of pending rows per route equals the Spark pass over
    `pending_rows` on the same tables: routes, takedowns, finished and stale rows."""
    from seeding import seed_rows

    from laion_spark.embed.pending import pending_by_route_local
    from laion_spark.embed.stage import (
        FINAL_STATUSES,
        expected_text_model,
        pending_rows,
        source_rows,
    )
    from laion_spark.tables import Tables

    tables = Tables(spark, make_cfg())
    url = "http://127.0.0.1:9/{}.jpg".format
    seed_rows(
        tables,
        "images",
        "sample_id url status",
        [(f"s{i}", url(i), "success") for i in range(10)] + [("bad", url(99), "http_error")],
    )
    # routes: en, multi (de), nolang (no language), an explicit group, no candidates row
    langs = ["en", "de", None, "", "fr", "en", "de", None]
    seed_rows(
        tables,
        "candidates",
        "sample_id url text language language_group",
        [(f"s{i}", url(i), "a caption", lang, None) for i, lang in enumerate(langs)]
        + [("s8", url(8), "x", "en", "multi")],
    )
    cols = "sample_id model_id status text_model_id"
    seed_rows(
        tables,
        "embeddings",
        cols,
        [
            ("s0", "m@1", SUCCESS, None),  # done (CLIP's own text tower)
            ("s1", "m@1", SUCCESS, "tower@1"),  # done only while multi routes to tower@1
            ("s2", "m@1", "failed_to_embed", None),  # not final: pending
            ("s3", "m@2", SUCCESS, None),  # another model's row
            ("s5", "m@1", FAILED_DECODE, "m@1"),  # done
        ],
    )
    seed_rows(tables, "takedowns", "request_id kind value", [("r1", "url", url(6))])
    english = ["en"]
    clip = type("Clip", (), {"model_id": "m@1"})()
    want = expected_text_model(clip, towers)
    spark_counts = {
        r["route"] or "none": r["count"]
        for r in pending_rows(tables, source_rows(tables, english), "m@1", want)
        .groupBy("route")
        .count()
        .collect()
    }
    local = pending_by_route_local(tables, english, "m@1", towers, FINAL_STATUSES, 1000)
    assert local == spark_counts
    assert sum(local.values()) == (6 if towers else 7)  # s1 is done only with the tower
    assert pending_by_route_local(tables, english, "m@1", towers, FINAL_STATUSES, 5) is None

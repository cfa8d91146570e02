"""The embed stage and the CLIP filter with a multilingual text tower, on real Spark/Delta.

One table of generated pairs: English captions and captions in German, French, Spanish and
Russian (languages detected as extract does), 30% of each describing another image. First
embedded with CLIP's text tower only (today's behaviour), then with the tiny tower added for
the multi/nolang groups: only those rows are redone, and the filter's precision and recall
on the wrong non-English captions go from chance to near perfect.
"""

from __future__ import annotations

import random

import numpy as np

from laion_spark.curate.stage import run as curate
from laion_spark.demo.synthetic import CAPTION_LANGUAGES, make_samples
from laion_spark.embed.stage import SUCCESS, run
from laion_spark.extract import language as lid
from laion_spark.ids import sample_id
from laion_spark.models.clip import load_clip
from laion_spark.models.text_tower import TINY_TOWER, load_text_towers, route_column, route_group
from laion_spark.tables import Tables

TOWERS = f"embed.text_towers={{multi: {TINY_TOWER}, nolang: {TINY_TOWER}}}"


def _rows(samples, prefix: str):
    out = []
    for s in samples:
        url = f"http://127.0.0.1/{prefix}/{s.index}.jpg"
        code, score = lid.detect(s.caption)
        group = lid.language_group(code, score, 0.25)
        out.append((sample_id(url, s.caption), url, s.caption, code, group, s))
    return out


def _write(spark, tables, rows):
    tables.upsert(
        spark.createDataFrame(
            [r[:5] for r in rows],
            "sample_id string, url string, text string, language string, language_group string",
        ),
        "candidates",
    )
    tables.upsert(
        spark.createDataFrame(
            [(r[0], r[1], "success", r[5].jpeg(64), 64, 64, "jpeg") for r in rows],
            "sample_id string, url string, status string, image binary, width int, "
            "height int, format string",
        ),
        "images",
    )


def _precision_recall(kept: set[str], rows) -> tuple[float, float]:
    removed = {r[0] for r in rows if r[0] not in kept}
    bad = {r[0] for r in rows if r[5].mismatched}
    tp = len(removed & bad)
    return tp / max(1, len(removed)), tp / max(1, len(bad))


def test_tower_routes_groups_redoes_only_them_and_filters_other_languages(spark, make_cfg):
    cfg = make_cfg(["embed.batch_size=32", "embed.device=cpu"])
    tables = Tables(spark, cfg)
    en = _rows(make_samples(40, seed=51, mismatch_rate=0.3), "en")
    ml = _rows(make_samples(120, seed=52, mismatch_rate=0.3, languages=CAPTION_LANGUAGES), "ml")
    # one image, captioned in English and in French: two samples (LAION keys url + text)
    s = make_samples(1, seed=53)[0]
    pair = _rows([s], "pair")
    pair += _rows(
        [type(s)(s.index, s.attrs, s.attrs.caption_in("fr", random.Random(1)), s.image_seed)],
        "pair",
    )
    _write(spark, tables, en + ml + pair)
    groups = {r[0]: r[4] for r in en + ml + pair}
    n_other = sum(g != "en" for g in groups.values())
    assert sum(r[4] == "multi" for r in ml) >= 110  # the language id sees the languages
    clip = load_clip(cfg.embed)

    # 1. no tower: today's behaviour, every caption through CLIP's text tower
    first = run(spark, cfg, tables)
    assert first.by_status == {SUCCESS: len(groups)}
    assert "text_model_multi" not in first.notes
    emb = {r["sample_id"]: r for r in tables.read("embeddings").collect()}
    assert {r["text_model_id"] for r in emb.values()} == {clip.model_id}
    # what clip_filter keeps with these rows (the model's threshold per group)
    kept = {
        sid
        for sid, r in emb.items()
        if r["similarity"] >= clip.thresholds["en" if groups[sid] == "en" else "multi"]
    }
    p0, r0 = _precision_recall(kept, ml)
    en_kept = {r[0] for r in en} & kept

    # 2. the tower added: only the rows of its groups are pending, redone in place
    cfg2 = make_cfg(["embed.batch_size=32", "embed.device=cpu", TOWERS], workdir=cfg.workdir)
    towers = load_text_towers(cfg2.embed, clip)
    tower = towers["multi"]
    second = run(spark, cfg2, tables)
    assert second.rows_in == n_other and second.by_status == {SUCCESS: n_other}
    assert second.notes["rows_multi"] + second.notes.get("rows_nolang", 0) == n_other
    assert "rows_en" not in second.notes and not second.notes["insert_only"]
    assert second.notes["text_model_multi"] == tower.model_id
    rows = {r["sample_id"]: r for r in tables.read("embeddings").collect()}
    assert len(rows) == len(groups)  # one row per sample, updated, none added
    for sid, r in rows.items():
        want = clip.model_id if groups[sid] == "en" else tower.model_id
        assert r["text_model_id"] == want, (groups[sid], r["text_model_id"])
        if groups[sid] == "en":  # untouched
            assert r["embedded_at"] == emb[sid]["embedded_at"]
        else:  # same image embedding, text from the tower
            np.testing.assert_allclose(r["image_embedding"], emb[sid]["image_embedding"], atol=1e-5)
    assert run(spark, cfg2, tables).rows_in == 0  # nothing left

    # 3. the filter: the tower's calibrated threshold for its groups, the model's for en
    res = curate(spark, cfg2, Tables(spark, cfg2), filters=["clip_filter"])
    notes = res.notes
    assert notes["clip_filter_threshold_multi"] == round(tower.threshold("multi"), 4)
    assert notes["clip_filter_threshold_en"] == round(clip.thresholds["en"], 4)
    kept2 = {
        r["sample_id"] for r in tables.read("subsets").where("subset = 'clip_filter'").collect()
    }
    p1, r1 = _precision_recall(kept2, ml)
    print(
        f"non-English mismatch removal: CLIP text tower precision={p0:.3f} recall={r0:.3f}; "
        f"multilingual tower precision={p1:.3f} recall={r1:.3f} "
        f"({sum(r[5].mismatched for r in ml)} wrong of {len(ml)})"
    )
    assert p1 >= 0.85 and r1 >= 0.85
    assert p1 + r1 > p0 + r0 + 0.3  # the tower is what makes the difference
    assert {r[0] for r in en} & kept2 == en_kept  # English decisions unchanged

    # 4. one image, an English and a French caption: different towers, both kept
    (en_id, *_), (fr_id, *_) = pair
    assert rows[en_id]["text_model_id"] == clip.model_id
    assert rows[fr_id]["text_model_id"] == tower.model_id
    assert rows[en_id]["similarity"] >= clip.thresholds["en"]
    assert rows[fr_id]["similarity"] >= tower.threshold("multi")
    assert {en_id, fr_id} <= kept2


def test_route_column_is_route_group(spark):
    rows = [
        ("en", "en"),
        ("multi", "en"),
        (None, "de"),
        (None, "en"),
        (None, None),
        ("", "fr"),
        ("nolang", None),
    ]
    df = spark.createDataFrame(rows, "language_group string, language string")
    got = [r["route"] for r in df.select(route_column(df.columns, ["en"]).alias("route")).collect()]
    assert got == [route_group(g, c, {"en"}) for g, c in rows]
    only_text = spark.createDataFrame([("x",)], "text string")
    assert only_text.select(route_column(["text"], ["en"]).alias("r")).first()["r"] == "nolang"

"""Curate filters on generated DataComp-format metadata, checked against DataComp's
published rules computed independently here with plain Python/numpy."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from laion_spark.curate.stage import run
from laion_spark.curate.subsets import read_subset
from laion_spark.export.subset import export_parquet, export_uids
from laion_spark.ids import sample_id

WORDS = ["red", "dog", "on", "a", "beach", "photo", "of", "cat", "x", "the", "tree", "blue"]
# edge cases around DataComp's thresholds (word count > 2, chars > 5, Unicode whitespace)
EDGE_TEXTS = [
    "a dog",
    "a b c",
    "ab cd",
    "abcdef",
    "a  b\tc",
    "big red dog",
    "one\u3000two three",
    "ab\ncd ef",
    "\u00e9t\u00e9 en france",
    "",
    "     ",
    "x y z",
]


def datacomp_metadata(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """A pool in DataComp's metadata parquet format, plus a `language` column."""
    rng = random.Random(seed)
    rows = []
    sizes = [
        (200, 600),
        (199, 400),
        (600, 200),
        (601, 200),
        (1000, 800),
        (300, 300),
        (0, 100),
        (200, 200),
        (1024, 341),
        (640, 480),
    ]
    for i in range(n):
        uid = "%032x" % rng.getrandbits(128)
        if i < len(EDGE_TEXTS):
            text = EDGE_TEXTS[i]
        else:
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 7)))
        w, h = (
            rng.choice(sizes)
            if rng.random() < 0.6
            else (rng.randint(50, 1500), rng.randint(50, 1500))
        )
        # rounded scores make ties, including at the top-30% threshold
        b32 = round(rng.uniform(0.1, 0.4), 2)
        l14 = round(rng.uniform(0.1, 0.4), 2)
        rows.append(
            {
                "uid": uid,
                "url": f"http://img.example/{i}.jpg",
                "text": text,
                "original_width": w,
                "original_height": h,
                "clip_b32_similarity_score": b32,
                "clip_l14_similarity_score": l14,
                "face_bboxes": [[0.1, 0.1, 0.2, 0.2]] if i % 7 == 0 else [],
                "sha256": "%064x" % rng.getrandbits(256),
                "language": rng.choice(["en", "en", "en", "de", "fr", None]),
            }
        )
    return pd.DataFrame(rows)


def import_datacomp(spark, tables, pdf: pd.DataFrame) -> None:
    """DataComp metadata -> candidates (uid kept as original_id, scores as extra columns)."""
    df = pdf.drop(columns=["face_bboxes", "sha256"]).rename(columns={"uid": "original_id"})
    df.insert(0, "sample_id", [sample_id(u, t) for u, t in zip(df.url, df.text, strict=True)])
    sdf = spark.createDataFrame(df)
    sdf = sdf.withColumn("original_width", sdf.original_width.cast("int")).withColumn(
        "original_height", sdf.original_height.cast("int")
    )
    tables.upsert(sdf, "candidates")


# ---- DataComp's rules, written out independently (baselines/apply_filter.py)


def expected_basic(pdf: pd.DataFrame) -> set[str]:
    out = set()
    for r in pdf.itertuples():
        w, h = r.original_width, r.original_height
        mn, mx = min(w, h), max(w, h)
        aspect = mx / mn if mn else np.inf
        if (
            r.language == "en"
            and len(r.text.split()) > 2
            and len(r.text) > 5
            and mn >= 200
            and aspect <= 3.0
        ):
            out.add(r.uid)
    return out


def expected_top(pdf: pd.DataFrame, key: str, fraction: float) -> set[str]:
    vals = pdf[key].to_numpy()
    n = int(len(vals) * fraction)
    threshold = -np.sort(-vals)[n]
    return set(pdf.uid[vals >= threshold])


def as_uid_array(uids: set[str]) -> np.ndarray:
    arr = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in uids], np.dtype("u8,u8"))
    arr.sort()
    return arr


TEXT_ROWS = ["two dogs on a beach", "hotdog stand here", "a teddy bear toy", "abstract art only"]
FILTERS = [
    "basic",
    "clip_l14_top30",
    "clip_b32_top30",
    "both",
    "thr",
    "safe_en",
    "l14_approx",
    "text_based",
]
DEFS = (
    "curate.definitions={"
    "both: {kind: intersect, of: [basic, clip_l14_top30]}, "
    "thr: {kind: clip_threshold, column: clip_b32_similarity_score, thresholds: {en: 0.3, de: 0.2}}, "
    "safe_en: {kind: intersect, of: [english, safety]}, "
    "l14_approx: {kind: clip_top, column: clip_l14_similarity_score, quantile: approx}}"
)


@pytest.fixture(scope="module")
def dc(spark, tmp_path_factory):
    """One imported DataComp-format pool and ONE curate run over it (Spark time is shared)."""
    from laion_spark.config import load_config
    from laion_spark.tables import Tables

    cfg = load_config("local", [f"workdir={tmp_path_factory.mktemp('dc')}", DEFS])
    tables = Tables(spark, cfg)
    pdf = datacomp_metadata()
    for i, t in enumerate(TEXT_ROWS):
        pdf.loc[20 + i, ["text", "language"]] = [t, "en"]
    import_datacomp(spark, tables, pdf)
    res = run(spark, cfg, tables, filters=FILTERS)
    sid = {r.uid: sample_id(r.url, r.text) for r in pdf.itertuples()}
    return pdf, tables, res, sid, cfg


def subset_ids(tables, name) -> set[str]:
    return {r.sample_id for r in read_subset(tables, name).collect()}


def test_basic_and_clip_top30_match_datacomp_rules(dc, tmp_path):
    pdf, tables, res, sid, _ = dc
    assert not [k for k in res.by_status if k.startswith("failed")], res.notes
    exp = {
        "basic": expected_basic(pdf),
        "clip_l14_top30": expected_top(pdf, "clip_l14_similarity_score", 0.3),
        "clip_b32_top30": expected_top(pdf, "clip_b32_similarity_score", 0.3),
    }
    # the generated pool really exercises the rules and the tie at the threshold
    assert 20 < len(exp["basic"]) < len(pdf) - 100
    assert len(exp["clip_l14_top30"]) > int(len(pdf) * 0.3) + 1
    for name, uids in exp.items():
        out = tmp_path / f"{name}.npy"
        n = export_uids(tables, name, str(out))
        got = np.load(out)
        assert got.dtype == np.dtype("u8,u8")
        assert n == len(uids)
        np.testing.assert_array_equal(got, as_uid_array(uids), err_msg=name)
    # intersection by name
    assert subset_ids(tables, "both") == {sid[u] for u in exp["basic"] & exp["clip_l14_top30"]}
    # parquet export carries uid + caption
    pq = tmp_path / "basic_parquet"
    assert export_parquet(tables, "basic", str(pq)) == len(exp["basic"])
    assert set(pd.read_parquet(pq).uid) == exp["basic"]


def test_approx_quantile_within_stated_bound(dc):
    pdf, tables, res, _, _ = dc
    n = read_subset(tables, "l14_approx").count()
    exact = len(expected_top(pdf, "clip_l14_similarity_score", 0.3))
    # rank error <= N / accuracy (10000), widened by the ties at the threshold value
    vals = pdf.clip_l14_similarity_score.to_numpy()
    tie = int((vals == -np.sort(-vals)[int(len(vals) * 0.3)]).sum())
    assert abs(n - exact) <= len(pdf) / 10000 + tie + 1


def test_clip_threshold_per_language_and_safety(dc):
    pdf, tables, _, sid, _ = dc
    want = set()
    for r in pdf.itertuples():
        t = {"en": 0.3, "de": 0.2}.get(r.language)
        if t is not None and r.clip_b32_similarity_score >= t:
            want.add(sid[r.uid])
    assert subset_ids(tables, "thr") == want
    # no scores table: safety keeps everything, so safe_en == english
    assert subset_ids(tables, "safe_en") == {sid[u] for u in pdf.uid[pdf.language == "en"]}


def test_text_based_filter_uses_shipped_vocabulary(dc):
    pdf, tables, _, sid, _ = dc
    got = subset_ids(tables, "text_based")
    # "dogs" (plural), "teddy bear" (bigram); not "hotdog" (no whole word)
    assert sid[pdf.uid[20]] in got and sid[pdf.uid[22]] in got
    assert sid[pdf.uid[21]] not in got and sid[pdf.uid[23]] not in got
    hits = {"dog", "cat", "beach", "tree"}  # the vocabulary words among WORDS
    want = {
        sid[r.uid]
        for r in pdf.itertuples()
        if r.language == "en"
        and (hits & set(r.text.lower().split()) or "teddy bear" in r.text or "dogs" in r.text)
    }
    assert got == want


def test_subset_writes_are_idempotent_and_replace_exactly(dc):
    from laion_spark.config import load_config

    pdf, tables, _, _, cfg = dc
    basic_n = len(subset_ids(tables, "basic"))
    before = tables.read("subsets").count()
    f50 = (
        "curate.definitions={f: {kind: clip_top, column: clip_b32_similarity_score, fraction: 0.5}}"
    )
    cfg_a = load_config("local", [f"workdir={cfg.workdir}", f50])
    run(tables.spark, cfg_a, tables, filters=["f"])
    first = subset_ids(tables, "f")
    run(tables.spark, cfg_a, tables, filters=["f"])
    assert subset_ids(tables, "f") == first  # re-run: same rows
    assert tables.read("subsets").count() == before + len(first)  # no duplicates
    cfg_b = load_config("local", [f"workdir={cfg.workdir}", f50.replace("0.5", "0.1")])
    run(tables.spark, cfg_b, tables, filters=["f"])
    smaller = subset_ids(tables, "f")
    assert smaller < first  # stale rows removed, not left behind
    assert len(subset_ids(tables, "basic")) == basic_n  # other subsets untouched
    assert tables.read("subsets").count() == before + len(smaller)


def test_unknown_filter_fails_fast(dc):
    _, tables, _, _, cfg = dc
    with pytest.raises(KeyError, match="unknown curate filter"):
        run(tables.spark, cfg, tables, filters=["nope"])

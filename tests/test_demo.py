"""The whole pipeline end to end on the generated crawl, twice: the second run adds nothing.

Every table the demo writes is read back with Spark SQL and, independently, delta-rs.
"""

import socket

import numpy as np
import pytest
from deltalake import DeltaTable

from laion_spark.demo.run import demo_samples, run_demo
from laion_spark.tables import SPECS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_demo_end_to_end_and_idempotent(spark, make_cfg, monkeypatch, capsys):
    monkeypatch.setenv("LAION_SPARK_DEMO_PORT", str(_free_port()))
    cfg = make_cfg()
    results = run_demo(cfg, pages=24)
    by_stage = {r.stage: r for r in results}
    assert by_stage["extract"].rows_out > 0
    assert by_stage["download"].by_status.get("success", 0) > 0
    out = capsys.readouterr().out
    assert "run summary" in out and "search:" in out

    from laion_spark.tables import Tables

    tables = Tables(spark, cfg)
    names = tables.register_views()
    for must in ["candidates", "images", "embeddings", "scores", "subsets", "index_manifest"]:
        assert must in names
    first = {}
    for name in names:
        keys = ", ".join(SPECS[name].keys)
        row = spark.sql(f"SELECT count(*) AS n, count(DISTINCT {keys}) AS k FROM {name}").first()
        assert row["n"] == row["k"], f"{name}: duplicate keys"
        rs = DeltaTable(tables.location(name)).to_pyarrow_table()
        assert rs.num_rows == row["n"], f"{name}: delta-rs sees {rs.num_rows}, Spark {row['n']}"
        first[name] = row["n"]
    # the failures a real crawl has are rows with a status, not gaps
    statuses = {r["status"] for r in spark.sql("SELECT DISTINCT status FROM images").collect()}
    assert {"success", "opted_out"} <= statuses
    assert spark.sql("SELECT count(*) n FROM candidates").first()["n"] == spark.sql(
        "SELECT count(*) n FROM images"
    ).first()["n"]

    _check_scores(spark, cfg, tables, by_stage["score"], out)

    again = run_demo(cfg, pages=24)
    for name in names:
        n = DeltaTable(tables.location(name)).to_pyarrow_table().num_rows
        if name == "runs":  # the one table that records every run: one row per stage run
            assert n == first[name] + len(again), f"runs: {first[name]} -> {n}"
            continue
        assert n == first[name], f"second demo run changed {name}: {first[name]} -> {n}"
    # every stage run is kept with what it did, and the second one found nothing to do
    runs = DeltaTable(tables.location("runs")).to_pandas()
    assert sorted(runs.stage.unique()) == sorted(r.stage for r in results)
    assert (runs.status == "ok").all() and runs.run_id.is_unique
    assert {r.stage: r.rows_in for r in again}["download"] == 0


def _check_scores(spark, cfg, tables, score, out: str) -> None:
    """The demo's heads: every scored row has punsafe, pwatermark and aesthetic; the planted
    stand-in unsafe / watermark / low-quality samples are found; safe mode hides them."""
    from laion_spark.index.search import Searcher

    assert "not an NSFW detector" in out and "planted" in out
    assert score.by_status.get("nsfw", 0) > 0 and score.by_status.get("watermark", 0) > 0
    assert "absent" not in score.notes or "nsfw" not in score.notes["absent"]
    rows = spark.sql(
        "SELECT s.*, c.url, e.image_embedding FROM scores s JOIN candidates c USING (sample_id) "
        "JOIN embeddings e USING (sample_id)"
    ).collect()
    assert rows and all(
        r[c] is not None for r in rows for c in ("punsafe", "pwatermark", "aesthetic")
    )
    by_path = {f"/img/{s.index}.jpg": s for s in demo_samples(24)}
    pairs = [(by_path[p], r) for r in rows if (p := r["url"][r["url"].find("/img/") :]) in by_path]
    assert len(pairs) >= 30
    for prop, flag in (("unsafe", "nsfw"), ("watermark", "watermark")):
        planted = np.array([getattr(s, prop) for s, _ in pairs])
        found = np.array([flag in r["flags"] for _, r in pairs])
        assert planted.sum() >= 3, prop
        # planted rate recovered within 0.1 absolute; >= 90% per-sample agreement
        assert abs(found.mean() - planted.mean()) <= 0.1, (prop, found.mean(), planted.mean())
        assert (found == planted).mean() >= 0.9, prop
    low = np.array([s.aesthetic < 5.5 for s, _ in pairs])
    aest = np.array([r["aesthetic"] for _, r in pairs])
    assert low.any() and aest[low].mean() < aest[~low].mean()

    searcher = Searcher.open(spark, cfg, tables)
    unsafe_ids = {r["sample_id"] for s, r in pairs if s.unsafe}
    q = np.asarray(next(r["image_embedding"] for s, r in pairs if s.unsafe), dtype=np.float32)
    safe = {h["sample_id"] for h in searcher.search(q, k=len(rows), safe_mode=True)}
    off = {h["sample_id"] for h in searcher.search(q, k=len(rows), safe_mode=False)}
    assert safe and not safe & unsafe_ids and off & unsafe_ids

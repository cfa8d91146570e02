"""The whole pipeline end to end on the generated crawl, twice: the second run adds nothing.

Every table the demo writes is read back with Spark SQL and, independently, delta-rs.
"""

import socket

import pytest
from deltalake import DeltaTable

from laion_spark.demo.run import run_demo
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
    # CLIP-DPO on a share of the images: responses sampled, scored, pairs mined and exported
    assert by_stage["dpo_generate"].rows_out > 0 and by_stage["dpo_score"].rows_out > 0
    assert by_stage["dpo_select"].rows_out > 0 and "[demo] dpo:" in out and "chosen:" in out

    from laion_spark.tables import Tables

    tables = Tables(spark, cfg)
    names = tables.register_views()
    for must in ["candidates", "images", "embeddings", "scores", "subsets", "index_manifest",
                 "sft_pool", "dpo_candidates", "dpo_pairs"]:
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
    assert {r.stage: r.rows_in for r in again}["dpo_generate"] == 0
    # the exported pairs load with the consumer's own tool
    import datasets

    ds = datasets.load_dataset("parquet", data_dir=cfg.workdir_path + "/dpo", split="train")
    assert len(ds) == first["dpo_pairs"] and ds[0]["images"][0].size[0] > 0

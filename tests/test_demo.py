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
    _check_report(spark, cfg, out)

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


def _check_report(spark, cfg, out: str) -> None:
    """The demo's report step: the three files, and report.json agrees with the tables it
    names; the keyword probes ran against the demo's merged index (the index path)."""
    import json
    import os

    line = next(x for x in out.splitlines() if x.startswith("[demo] report: "))
    html = line.split(": ", 1)[1].rsplit(" (", 1)[0]
    folder = os.path.dirname(html)
    for name in ("index.html", "README.md", "report.json"):
        assert os.path.getsize(os.path.join(folder, name)) > 500, name
    with open(os.path.join(folder, "report.json"), encoding="utf-8") as f:
        rep = json.load(f)
    t = rep["tables"]["candidates"]
    n = spark.sql(f"SELECT count(*) FROM delta.`{t['location']}` VERSION AS OF {t['version']}")
    assert rep["population"]["rows"] == n.first()[0] > 0
    steps = {s["step"]: s["count"] for s in rep["funnel"]["steps"]}
    assert steps["candidates"] >= steps["downloaded"] >= steps["embedded"] > 0
    probes = rep["probes"]
    assert probes["status"] == "ok" and probes["index"]["status"] == "ok", probes["index"]
    returned = [f["returned"] for f in probes["index"]["terms"].values()]
    assert returned and all(0 < r <= probes["index"]["k"] for r in returned)
    assert rep["model_id"] and rep["toxicity"]["kind"] in ("word list", "classifier", "mixed")

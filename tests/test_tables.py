"""Table contracts: MERGE upsert is idempotent, partial, schema-evolving; readable by delta-rs."""

from pyspark.sql import Row

from laion_spark.ids import sample_id
from laion_spark.tables import SPECS


def _cands(spark, n, text="cap"):
    rows = [Row(sample_id=sample_id(f"http://h/{i}.jpg", text), url=f"http://h/{i}.jpg", text=text) for i in range(n)]
    return spark.createDataFrame(rows)


def test_every_table_keyed_by_sample_id_or_declared():
    for spec in SPECS.values():
        assert spec.keys, spec.name
        for k in spec.keys:
            assert k in spec.schema.fieldNames(), (spec.name, k)


def test_upsert_is_idempotent_and_dedups_source(spark, tables):
    df = _cands(spark, 5)
    tables.upsert(df.unionByName(df), "candidates")
    tables.upsert(df, "candidates")
    out = tables.read("candidates")
    assert out.count() == 5
    assert out.select("sample_id").distinct().count() == 5
    # declared schema is there even for columns this write did not fill
    assert "language_group" in out.columns


def test_upsert_updates_only_given_columns_and_adds_new_ones(spark, tables):
    df = _cands(spark, 3)
    tables.upsert(df, "candidates")
    sid = df.first()["sample_id"]
    tables.upsert(spark.createDataFrame([Row(sample_id=sid, language="en")]), "candidates")
    row = tables.read("candidates").where(f"sample_id = '{sid}'").first()
    assert row["language"] == "en" and row["url"] is not None and row["text"] == "cap"
    tables.upsert(spark.createDataFrame([Row(sample_id=sid, flyt_score=0.5)]), "scores")
    assert "flyt_score" in tables.read("scores").columns


def test_pending_is_an_anti_join(spark, tables):
    df = _cands(spark, 4)
    tables.upsert(df.limit(1), "images")
    assert tables.pending(df, "images").count() == 3


def test_tables_readable_by_sql_and_delta_rs(spark, tables):
    from deltalake import DeltaTable

    tables.upsert(_cands(spark, 6), "candidates")
    assert tables.register_views() == ["candidates"]
    assert spark.sql("SELECT count(*) AS n FROM candidates").first()["n"] == 6
    dt = DeltaTable(tables.location("candidates"))
    pa_table = dt.to_pyarrow_table()
    assert pa_table.num_rows == 6
    assert set(pa_table.column("text").to_pylist()) == {"cap"}
    counts = {r["table"]: r["rows"] for r in tables.counts()}
    assert counts["candidates"] == 6

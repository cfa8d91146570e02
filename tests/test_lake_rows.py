"""lake.read_rows: the in-process Delta reader the local paths share (export, score,
takedown lookups, run records), on tables whose files mix string and string_view columns
(delta-rs writes views; Spark and pyarrow write plain strings)."""

from __future__ import annotations

import pyarrow as pa
import pytest
from deltalake import write_deltalake
from deltalake.exceptions import TableNotFoundError

from laion_spark.lake import read_rows


@pytest.fixture()
def mixed(tmp_path):
    loc = str(tmp_path / "t")
    write_deltalake(loc, pa.table({"sample_id": ["a", "b"], "model_id": ["m", "n"]}))
    view = pa.string_view()
    more = pa.table(
        {"sample_id": pa.array(["c", "d"], view), "model_id": pa.array(["m", None], view)}
    )
    write_deltalake(loc, more, mode="append")
    return loc


def test_filters_on_columns_not_asked_for(mixed):
    """A filter's column need not be among the columns read, on either path (the scan's
    filter, or the batch-by-batch fallback a view-typed file forces)."""
    got = read_rows(mixed, ["sample_id"], equals=("model_id", "m"))
    assert got.column_names == ["sample_id"] and got.schema.field(0).type == pa.string()
    assert sorted(got.column("sample_id").to_pylist()) == ["a", "c"]
    got = read_rows(mixed, ["sample_id"], isin=("model_id", ["n"]))
    assert got.column("sample_id").to_pylist() == ["b"]
    both = read_rows(mixed, ["model_id"], isin=("sample_id", ["a", "d"]), equals=("model_id", "m"))
    assert both.column("model_id").to_pylist() == ["m"]


def test_all_columns_missing_columns_and_no_table(mixed, tmp_path):
    assert read_rows(mixed).num_rows == 4
    assert read_rows(mixed, ["sample_id", "absent"]).column_names == ["sample_id"]
    with pytest.raises(TableNotFoundError):
        read_rows(str(tmp_path / "none"), ["sample_id"])


def test_local_upsert_into_an_older_table_keeps_every_value(tmp_path):
    """A `runs` table from a release without `seconds`: the delta-rs record adds the
    column, as Spark's schema-merging MERGE does, instead of dropping the value."""
    from datetime import UTC, datetime

    from deltalake import DeltaTable

    from laion_spark.config import load_config
    from laion_spark.tables import Tables, arrow_schema

    tables = Tables(None, load_config("local", [f"workdir={tmp_path}"]))
    old = pa.schema([f for f in arrow_schema("runs") if f.name != "seconds"])
    write_deltalake(tables.location("runs"), old.empty_table())
    row = {"run_id": "r1", "stage": "score", "status": "ok", "by_status": {"scored": 3},
           "notes": {"engine": '"local"'}, "started_at": datetime.now(UTC), "seconds": 1.5}
    assert tables.upsert_rows_local([row], "runs", update=False)
    got = DeltaTable(tables.location("runs")).to_pyarrow_table().to_pylist()
    assert len(got) == 1 and got[0]["seconds"] == 1.5
    assert dict(got[0]["by_status"]) == {"scored": 3}

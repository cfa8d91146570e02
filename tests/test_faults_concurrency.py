"""Two writers on the same Delta table at the same time: Delta's optimistic concurrency
decides, the loser's MERGE is run again from the new version (no duplicate, no loss), or,
when it keeps losing, stops with a message naming the table and what to do."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from laion_spark.tables import TableConflictError


def _gated_rows(spark, lo: int, hi: int, gate: Path | None):
    """Candidates lo..hi-1; when `gate` is set, computing them (inside the MERGE) announces
    `gate`.started and waits for `gate`.open, so another writer can commit in between."""
    started, opened = (str(gate) + ".started", str(gate) + ".open") if gate else ("", "")

    def wait(i):  # no hints: Spark would read them as a pandas UDF
        if started:
            Path(started).touch()
            deadline = time.monotonic() + 60
            while not Path(opened).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        return f"sid{i:04d}"

    sid = F.udf(wait, T.StringType())
    return (
        spark.range(lo, hi, numPartitions=1)
        .select(sid("id").alias("sample_id"), F.concat(F.lit("http://h/"), F.col("id")).alias("url"))
        .withColumn("text", F.lit("cap"))
    )


def _race(spark, tables, gate: Path, a_update: bool):
    """Writer A (a thread) starts its MERGE and is held inside it; writer B commits; A goes on."""
    tables.upsert(_gated_rows(spark, 0, 3, None), "candidates")  # the table exists, with rows
    box: dict = {}

    def writer_a():
        try:
            box["a"] = tables.upsert(_gated_rows(spark, 0, 10, gate), "candidates", update=a_update)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            box["error"] = e

    t = threading.Thread(target=writer_a)
    t.start()
    deadline = time.monotonic() + 120
    while not Path(str(gate) + ".started").exists():
        assert time.monotonic() < deadline and t.is_alive(), box
        time.sleep(0.05)
    box["b"] = tables.upsert(_gated_rows(spark, 5, 15, None), "candidates")  # B commits first
    Path(str(gate) + ".open").touch()
    t.join(180)
    assert not t.is_alive()
    return box


@pytest.mark.parametrize("a_update", [True, False], ids=["merge", "insert_only"])
def test_concurrent_writer_loses_commit_and_retries(spark, tables, tmp_path, caplog, a_update):
    caplog.set_level(logging.WARNING, logger="laion_spark.tables")
    tables.retry_backoff_s = 0.05
    box = _race(spark, tables, tmp_path / "gate", a_update)
    assert "error" not in box, box.get("error")
    # A really lost the race once and was retried from B's version
    retried = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert retried and "candidates" in retried[0] and "Concurrent" in retried[0], retried
    assert box["b"]["num_inserted_rows"] == 10
    # the retry recomputed against B's rows: only A's keys nobody had written were inserted
    assert box["a"]["num_inserted_rows"] == 2  # keys 3 and 4
    ids = [r["sample_id"] for r in tables.read("candidates").select("sample_id").collect()]
    assert len(ids) == len(set(ids)) == 15  # no duplicate, no loss
    assert sorted(ids) == [f"sid{i:04d}" for i in range(15)]


def test_writer_that_keeps_losing_stops_with_a_clear_message(spark, tables, tmp_path):
    tables.commit_attempts = 1  # no retry: the first lost commit is the last
    box = _race(spark, tables, tmp_path / "gate", True)
    err = box.get("error")
    assert isinstance(err, TableConflictError), err
    msg = str(err)
    assert "table candidates" in msg and tables.location("candidates") in msg
    assert "another writer" in msg and "run this stage again" in msg
    # the loser wrote nothing: B's 10 rows plus the 3 first ones, each once
    ids = [r["sample_id"] for r in tables.read("candidates").select("sample_id").collect()]
    assert len(ids) == len(set(ids)) == 13

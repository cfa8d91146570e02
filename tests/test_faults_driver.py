"""The driver killed in the middle of a commit: the MERGE's data files are being written but
the Delta log has no entry for them yet. A re-run completes with no duplicate and no lost
row, and the dead run's files are not part of the table."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

ROOT = Path(__file__).resolve().parent.parent
N = 400

WRITER = textwrap.dedent(
    """
    import sys
    from pyspark.sql import functions as F
    from laion_spark.config import load_config
    from laion_spark.session import get_spark
    from laion_spark.tables import Tables

    cfg = load_config("local", [f"workdir={sys.argv[1]}"])
    spark = get_spark(cfg)
    spark.conf.set("spark.sql.files.maxRecordsPerFile", "1")
    rows = spark.range(int(sys.argv[2]), numPartitions=1).select(
        F.format_string("sid%04d", "id").alias("sample_id"),
        F.lit("http://h/x.jpg").alias("url"), F.lit("cap").alias("text"))
    print("merging", flush=True)
    Tables(spark, cfg).upsert(rows, "candidates", update=False, dedup=False)
    print("committed", flush=True)
    """
)


def _rows(spark, n: int):
    return spark.range(n, numPartitions=1).select(
        F.format_string("sid%04d", "id").alias("sample_id"),
        F.lit("http://h/x.jpg").alias("url"),
        F.lit("cap").alias("text"),
    )


@pytest.mark.slow
def test_driver_killed_mid_commit_then_rerun_is_exact(spark, make_cfg, tmp_path):
    from laion_spark.tables import Tables

    wd = tmp_path / "wd"
    tables = Tables(spark, make_cfg(workdir=wd))
    tables.upsert(_rows(spark, 5), "candidates")
    table_dir = Path(tables.location("candidates"))
    before = {p.name for p in table_dir.glob("*.parquet")}
    log_before = sorted(p.name for p in (table_dir / "_delta_log").glob("*.json"))

    # one file per row makes the write phase long enough to land the kill inside it
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(wd), str(N)], env=env,
                            start_new_session=True, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    try:
        while True:
            new = {p.name for p in table_dir.glob("*.parquet")} - before
            if len(new) >= 3:  # the MERGE is writing its data files
                break
            assert proc.poll() is None, "the writer ended before it wrote a data file"
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its JVM, at once
        proc.wait(30)
    out = proc.stdout.read() if proc.stdout else ""
    assert "committed" not in out
    # killed between the data files and the log entry: the table did not change
    assert sorted(p.name for p in (table_dir / "_delta_log").glob("*.json")) == log_before
    orphans = {p.name for p in table_dir.glob("*.parquet")} - before
    assert orphans
    assert tables.read("candidates").count() == 5

    # the re-run: exactly one row per sample, none of the dead run's files in the table
    tables.upsert(_rows(spark, N), "candidates", update=False, dedup=False)
    got = DeltaTable(str(table_dir)).to_pyarrow_table(columns=["sample_id"])
    ids = got.column("sample_id").to_pylist()
    assert len(ids) == len(set(ids)) == N
    live = {Path(f).name for f in DeltaTable(str(table_dir)).file_uris()}
    assert not live & orphans

"""A real job through spark-submit on a real multi-process Spark (local-cluster: a master,
two workers and their executor JVMs, all on 127.0.0.1)."""

import os
import subprocess
import sys
from pathlib import Path

from deltalake import DeltaTable
from shared_data import WHIRLWIND_WARC

from laion_spark.config import load_config
from laion_spark.session import submit_args

ROOT = Path(__file__).resolve().parent.parent


def test_extract_job_on_local_cluster(tmp_path):
    cfg = load_config("local", ["spark.master=null"])
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               SPARK_LOCAL_IP="127.0.0.1", SPARK_WORKER_DIR=str(tmp_path / "work"))
    spark_submit = Path(sys.executable).parent / "spark-submit"
    cmd = [
        str(spark_submit), "--master", "local-cluster[2,1,1024]",
        "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.ui.enabled=false",
        *submit_args(cfg),
        str(ROOT / "jobs" / "extract.py"),
        "--set", "spark.master=null", "--set", f"workdir={tmp_path}",
        "--inputs", str(WHIRLWIND_WARC),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "extract" in proc.stdout and "run summary" in proc.stdout
    # read back independently of Spark, with delta-rs
    table = DeltaTable(str(tmp_path / "tables" / "candidates")).to_pyarrow_table()
    assert table.num_rows == 5  # the real Wikipedia page's five image-alt pairs
    ids = table.column("sample_id").to_pylist()
    assert len(ids) == len(set(ids))
    assert all(u.startswith(("http://", "https://")) for u in table.column("url").to_pylist())

"""An executor JVM killed in the middle of the download stage on a real multi-process Spark
(local-cluster: a master, two workers and their executor JVMs on 127.0.0.1): Spark re-runs
the lost tasks, and `images` holds exactly one row per candidate."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pyarrow as pa
import pytest
import test_download_data as data
from deltalake import DeltaTable, write_deltalake

from laion_spark.config import load_config
from laion_spark.demo.image_server import ImageServer, Route
from laion_spark.ids import sample_id
from laion_spark.session import submit_args
from laion_spark.tables import arrow_schema

ROOT = Path(__file__).resolve().parent.parent
N = 48


def _executors(submit_pid: int) -> list[psutil.Process]:
    """This job's executor JVMs: local-cluster's workers run in the driver JVM and start
    executors as its children, so they descend from the spark-submit process."""
    out = []
    try:
        for p in psutil.Process(submit_pid).children(recursive=True):
            try:
                if "CoarseGrainedExecutorBackend" in " ".join(p.cmdline()):
                    out.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    except psutil.NoSuchProcess:
        pass
    return out


@pytest.mark.slow
def test_executor_killed_mid_download_leaves_one_row_per_sample(tmp_path):
    submit: list[int] = []
    killed: list[int] = []
    body = data.jpeg()
    lock = threading.Lock()
    served = [0]

    def kill_one():
        for p in _executors(submit[0])[:1] if submit else []:
            killed.append(p.pid)
            os.kill(p.pid, signal.SIGKILL)

    def route(path: str) -> Route:
        with lock:
            served[0] += 1
            if served[0] == 5:  # tasks are mid-fetch: kill an executor under them
                threading.Thread(target=kill_one).start()
        return Route(body, "image/jpeg", delay=0.5)

    with ImageServer() as srv:
        srv.add_handler("/img/", route)
        urls = [srv.url(f"/img/{i}.jpg") for i in range(N)]
        ids = [sample_id(u, f"caption {i}") for i, u in enumerate(urls)]
        schema = arrow_schema("candidates")
        cols = {"sample_id": ids, "url": urls, "text": [f"caption {i}" for i in range(N)]}
        cands = pa.table(
            [pa.array(cols.get(f.name, [None] * N), f.type) for f in schema], schema=schema
        )
        write_deltalake(str(tmp_path / "tables" / "candidates"), cands)

        cfg = load_config("local", ["spark.master=null"])
        env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
                   SPARK_LOCAL_IP="127.0.0.1", SPARK_WORKER_DIR=str(tmp_path / "work"))
        cmd = [
            str(Path(sys.executable).parent / "spark-submit"), "--master", "local-cluster[2,1,1024]",
            "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.ui.enabled=false",
            *submit_args(cfg),
            str(ROOT / "jobs" / "download.py"),
            "--set", "spark.master=null", "--set", f"workdir={tmp_path}",
            "--set", "download.partitions=4", "--set", "download.threads=2",
            "--set", "download.image_size=32", "--set", "download.retries=0",
            "--set", "download.allow_networks=['127.0.0.1/32']",
        ]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=tmp_path)
        submit.append(proc.pid)
        _, stderr = proc.communicate(timeout=1200)
        hits = dict(srv.hits)
    assert proc.returncode == 0, stderr[-4000:]
    assert killed, "no executor was killed: the fault was not injected"
    # the killed executor's tasks ran again elsewhere: some images were fetched twice
    assert any(n > 1 for n in hits.values()), hits
    images = DeltaTable(str(tmp_path / "tables" / "images")).to_pyarrow_table(
        columns=["sample_id", "status"]
    )
    got = images.column("sample_id").to_pylist()
    assert len(got) == len(set(got)) == N  # no duplicate, no loss
    assert set(got) == set(ids)
    assert set(images.column("status").to_pylist()) == {"success"}

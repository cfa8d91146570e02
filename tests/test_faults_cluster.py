"""A real job through spark-submit on a real multi-process Spark (local-cluster: a master,
two workers and their executor JVMs on 127.0.0.1), with executor JVMs killed in the middle
of download, embed and index: Spark re-runs the lost tasks, and `images`, `embeddings` and
`index_ids` hold exactly one row per extracted candidate; every index shard those rows point
to is complete.

One spark-submit runs extract (a generated crawl whose images are served on 127.0.0.1) ->
download -> embed -> index, each stage as its `jobs/<stage>.py` runs it
(tests/cluster_driver.py, which announces each stage on stdout); a watcher thread here
kills one executor per stage:
- download: when the image server has answered 5 requests (tasks are mid-fetch);
- embed: when an executor's Python worker has torch loaded (an embed task is running);
- index: when an executor's Python worker has faiss loaded (a shard is being built).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pytest
import test_download_data as data
from deltalake import DeltaTable

from laion_spark.config import load_config
from laion_spark.demo.crawl import write_synthetic_crawl
from laion_spark.demo.image_server import ImageServer, Route
from laion_spark.session import submit_args

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


def _worker_has(executor: psutil.Process, library: str) -> bool:
    """Whether one of the executor's Python workers has `library` mapped (is using it)."""
    try:
        kids = executor.children(recursive=True)
    except psutil.NoSuchProcess:
        return False
    for p in kids:
        try:
            if library in Path(f"/proc/{p.pid}/maps").read_text():
                return True
        except OSError:
            continue
    return False


class Killer:
    """Kills one executor per stage, at the moment the stage's rule says tasks are busy."""

    LIBRARY = {"embed": "libtorch_cpu", "index": "_swigfaiss"}

    def __init__(self):
        self.submit_pid = 0
        self.stage = ""
        self.kills: dict[str, float] = {}  # stage -> when its executor was killed
        self.events: dict[str, dict] = {}  # stage -> start/end times and result
        self.lines: list[str] = []
        self.done = threading.Event()

    def kill_one(self, stage: str) -> None:
        if stage in self.kills or self.stage != stage:
            return
        for p in self._pick(stage):
            os.kill(p.pid, signal.SIGKILL)
            self.kills[stage] = time.time()
            return

    def _pick(self, stage: str) -> list[psutil.Process]:
        execs = _executors(self.submit_pid)
        lib = self.LIBRARY.get(stage)
        return [p for p in execs if _worker_has(p, lib)] if lib else execs[:1]

    def read(self, stream) -> None:
        """The driver's stdout: which stage runs now, and when each began and ended."""
        for line in stream:
            self.lines.append(line)
            parts = line.split(maxsplit=5)
            if len(parts) >= 4 and parts[0] == "STAGE" and parts[2] in ("start", "end"):
                ev = self.events.setdefault(parts[1], {})
                ev[parts[2]] = float(parts[3])
                if parts[2] == "start":
                    self.stage = parts[1]
                else:
                    ev["rc"] = int(parts[4])
                    self.stage = ""
        self.done.set()

    def watch(self) -> None:
        """Polls for embed's and index's busy workers (download's kill is the server's)."""
        while not self.done.is_set():
            if self.stage in self.LIBRARY and self.stage not in self.kills:
                self.kill_one(self.stage)
            time.sleep(0.02)


@pytest.mark.slow
def test_executors_killed_mid_download_embed_index_leave_one_row_per_sample(tmp_path):
    killer = Killer()
    body = data.jpeg()
    lock = threading.Lock()
    served = [0]

    def route(path: str) -> Route:
        with lock:
            served[0] += 1
            if served[0] == 5:  # tasks are mid-fetch: kill an executor under them
                threading.Thread(target=killer.kill_one, args=("download",)).start()
        return Route(body, "image/jpeg", delay=0.25)

    with ImageServer() as srv:
        srv.add_handler("/img/", route)
        # 12 pages of 4 images each (plus the generator's junk images, which extract drops)
        pages = [
            {"url": f"http://site{p}.test/gallery/index.html",
             "images": [(srv.url(f"/img/{4 * p + k}.jpg"), f"a photo of object {4 * p + k}")
                        for k in range(4)]}
            for p in range(N // 4)
        ]
        crawl = write_synthetic_crawl(str(tmp_path / "crawl"), pages)["warc"]

        cfg = load_config("local", ["spark.master=null"])
        env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
                   SPARK_LOCAL_IP="127.0.0.1", SPARK_WORKER_DIR=str(tmp_path / "work"),
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        sets = {
            "download.partitions": 4, "download.threads": 2, "download.image_size": 32,
            "download.retries": 0, "download.allow_networks": "['127.0.0.1/32']",
            "embed.model": "tiny-clip", "embed.device": "cpu", "embed.batch_size": 8,
            "index.partitions": 2, "index.local_cache": tmp_path / "index-cache",
            # 48 vectors would be indexed in the driver; this test is about Spark's shard tasks
            "index.local_max_vectors": 0,
        }
        cmd = [
            str(Path(sys.executable).parent / "spark-submit"), "--master", "local-cluster[2,1,1024]",
            "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.ui.enabled=false",
            # small tables: Delta's 50 snapshot tasks per log replay would dominate each stage
            "--conf", "spark.databricks.delta.snapshotPartitions=2",
            *submit_args(cfg),
            str(ROOT / "tests" / "cluster_driver.py"), str(tmp_path), crawl,
            *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")],
        ]
        t0 = time.time()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=tmp_path)
        killer.submit_pid = proc.pid
        threads = [threading.Thread(target=killer.read, args=(proc.stdout,), daemon=True),
                   threading.Thread(target=killer.watch, daemon=True)]
        for t in threads:
            t.start()
        stderr = proc.stderr.read()
        proc.wait(timeout=1200)
        threads[0].join(30)
        hits = dict(srv.hits)
    assert proc.returncode == 0, ("".join(killer.lines)[-2000:], stderr[-4000:])
    assert all(ev.get("rc") == 0 for ev in killer.events.values()), killer.events
    assert "run summary" in "".join(killer.lines)  # each job printed its summary
    # one executor lost in each stage, while that stage was running
    assert set(killer.kills) == {"download", "embed", "index"}, (killer.kills, killer.events)
    assert list(killer.events) == ["extract", "download", "embed", "index"]
    for stage, when in killer.kills.items():
        ev = killer.events[stage]
        assert ev["start"] <= when <= ev["end"], (stage, when, ev)
    print(
        "executor kills, seconds from the kill to the stage's end (stage total): "
        + ", ".join(
            f"{s} {killer.events[s]['end'] - k:.1f} "
            f"({killer.events[s]['end'] - killer.events[s]['start']:.1f})"
            for s, k in killer.kills.items()
        )
        + f"; spark-submit {time.time() - t0:.1f} s"
    )
    # the killed executor's download tasks ran again elsewhere: some images fetched twice
    assert any(n > 1 for n in hits.values()), hits

    def column(table: str, *cols: str) -> pa.Table:
        return DeltaTable(str(tmp_path / "tables" / table)).to_pyarrow_table(columns=list(cols))

    ids = column("candidates", "sample_id").column("sample_id").to_pylist()
    assert len(ids) == len(set(ids)) == N  # extract ran on the executors: every pair once
    for table in ("images", "embeddings", "index_ids"):
        got = column(table, "sample_id").column("sample_id").to_pylist()
        assert len(got) == len(set(got)) == N, table  # no duplicate, no loss
        assert set(got) == set(ids), table
    for table in ("images", "embeddings"):
        assert set(column(table, "status").column("status").to_pylist()) == {"success"}, table
    # every shard the committed ids point to is whole: it holds exactly those ids
    import faiss

    shard_ids = column("index_ids", "shard", "faiss_id").to_pandas()
    man = column("index_manifest", "shard", "kind", "path").to_pandas()
    man = man[man["kind"] == "shard"].set_index("shard")
    for shard, grp in shard_ids.groupby("shard"):
        path = man.loc[shard, "path"]
        index = faiss.read_index(str(tmp_path / path if not os.path.isabs(path) else path))
        assert index.ntotal == len(grp), shard
        typed = faiss.downcast_index(index)  # `index` keeps ownership of the C++ object
        if hasattr(typed, "id_map"):  # IDMap2,Flat at this size: the ids are stored
            assert sorted(faiss.vector_to_array(typed.id_map)) == sorted(grp["faiss_id"]), shard

"""The pipeline with everything on S3, as an EMR user runs it: Delta tables under `s3a://`
(hadoop-aws + Delta's S3 log store), index shards written by Spark tasks and an export
written through fsspec/s3fs, against a real S3 API server (moto in server mode) that this
test starts on 127.0.0.1 with fake credentials. Nothing here can reach AWS: every client
gets the loopback endpoint, and the EC2 metadata lookup is disabled.

One driver subprocess (hadoop-aws must be on the JVM's classpath from its start, and a
process has one JVM) runs download -> embed -> curate -> index -> search -> export, then
a second time over the same candidates; this process checks the results with its own
clients (delta-rs, s3fs, webdataset's tar layout).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest
import s3fs

ROOT = Path(__file__).resolve().parent.parent
N = 10
BUCKET = "lake"

DRIVER = textwrap.dedent(
    """
    import json, sys, time
    from laion_spark.config import load_config
    from laion_spark.demo.synthetic import make_samples
    from laion_spark.export.stage import run as export
    from laion_spark.ids import sample_id
    from laion_spark.index.search import Searcher
    from laion_spark.session import get_spark
    from laion_spark.stage import run_stage
    from laion_spark.tables import Tables, spark_schema

    conf, image_base, n, export_to = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    cfg = load_config(conf)
    spark = get_spark(cfg)
    tables = Tables(spark, cfg)
    gen = make_samples(n, seed=5)
    rows = [(sample_id(f"{image_base}/{i}.jpg", s.caption), f"{image_base}/{i}.jpg", s.caption,
             "en") for i, s in enumerate(gen)]
    cands = spark.createDataFrame(
        rows, spark_schema("candidates", ["sample_id", "url", "text", "language"]))
    out = {"jars": spark.conf.get("spark.jars"), "runs": [], "seconds": {}}
    for attempt in range(2):  # the second pass over the same input must change nothing
        t = time.time()
        run = {"candidates": tables.upsert(cands, "candidates", update=False)}  # as extract
        out["seconds"][f"{attempt}.candidates"] = round(time.time() - t, 1)
        stages = ("download", "embed", "curate", "index", "merge_index", "export")
        if attempt:  # the re-run: the stages that write one row per sample, and the export
            stages = ("download", "embed", "index", "export")
        for stage in stages:
            t = time.time()
            if stage == "export":
                r = export(spark, cfg, tables, subset="no_filter", to=export_to)
            else:
                r = run_stage(stage, spark, cfg, tables)
            assert r.error is None, (stage, r.error)
            run[stage] = {"rows_out": r.rows_out, "by_status": r.by_status}
            out["seconds"][f"{attempt}.{stage}"] = round(time.time() - t, 1)
        out["runs"].append(run)
    t = time.time()
    searcher = Searcher.open(None, cfg)  # no Spark: delta-rs + shards copied from S3
    hits = searcher.search(gen[0].caption, k=3, safe_mode=False, dedup=False)
    out["seconds"]["search"] = round(time.time() - t, 1)
    out["search"] = {"ntotal": searcher.ntotal, "hits": [h["sample_id"] for h in hits]}
    out["sample_ids"] = [r[0] for r in rows]
    print("RESULT " + json.dumps(out, default=str), flush=True)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def s3_server(tmp_path):
    """moto's S3 API on 127.0.0.1:<free port> with an empty bucket; stopped afterwards."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "moto.log").open("wb"),
    )
    try:
        # no region given: s3fs would name us-east-1 as a LocationConstraint, which S3 refuses
        fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=endpoint)
        deadline = time.monotonic() + 60
        while True:
            try:
                fs.mkdir(BUCKET)
                break
            except (OSError, ConnectionError):  # not listening yet
                assert proc.poll() is None, (tmp_path / "moto.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "moto server did not start in 60 s"
                time.sleep(0.2)
        yield endpoint, fs
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
def test_pipeline_on_s3_is_exactly_once(s3_server, tmp_path):
    endpoint, fs = s3_server
    from laion_spark.demo.image_server import ImageServer
    from laion_spark.demo.synthetic import make_samples

    wd = f"s3a://{BUCKET}/wd"
    conf = tmp_path / "s3.yaml"
    conf.write_text(
        textwrap.dedent(f"""
        workdir: {wd}
        spark:
          master: local[2]
          delta_from: jars
          conf:
            spark.sql.shuffle.partitions: "2"
            # as on EMR with s3a:// (the default for s3a, named here as a user would)
            spark.delta.logStore.s3a.impl: io.delta.storage.S3SingleDriverLogStore
        tables:
          root: {wd}/tables
        storage:
          s3_jars: auto
          s3_endpoint: {endpoint}
          s3_region: us-east-1
        download:
          threads: 4
          partitions: 2
          retries: 0
          image_size: 32
          allow_networks: ['127.0.0.1/32']
        embed:
          model: tiny-clip
          device: cpu
        curate:
          filters: [no_filter]
        index:
          partitions: 2
          local_cache: {tmp_path / "index-cache"}
        export:
          shard_samples: 4
    """)
    )
    samples = make_samples(N, seed=5)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_EC2_METADATA_DISABLED="true",
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
    )
    with ImageServer() as srv:
        for i, s in enumerate(samples):
            srv.add(f"/img/{i}.jpg", s.jpeg(size=32))
        base = srv.url("/img")
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-c", DRIVER, str(conf), base, str(N), f"s3://{BUCKET}/export"],
            env=env,
            capture_output=True,
            text=True,
            timeout=840,
            cwd=tmp_path,
        )
        seconds = time.monotonic() - t0
    (tmp_path / "driver.log").write_text(proc.stderr)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-6000:])
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])
    print(
        f"s3 pipeline driver: {seconds:.1f} s; per stage: {out['seconds']}; "
        f"re-run export: {out['runs'][1]['export']['by_status']}"
    )
    ids = set(out["sample_ids"])
    assert len(ids) == N
    assert "hadoop-aws-" in out["jars"]  # storage.s3_jars=auto put the S3 jars on the classpath

    first, second = out["runs"]
    assert first["candidates"]["num_inserted_rows"] == N
    assert second["candidates"]["num_inserted_rows"] == 0
    assert first["download"]["by_status"] == {"success": N}
    assert second["download"]["rows_out"] == 0  # nothing pending: nothing fetched again
    assert second["embed"]["rows_out"] == 0
    assert second["index"]["by_status"] == {"already_indexed": N}

    # the tables on S3, read with delta-rs (as the search service does): one row per sample
    from deltalake import DeltaTable

    opts = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }

    def column(table: str, col: str = "sample_id") -> list:
        dt = DeltaTable(f"{wd}/tables/{table}", storage_options=opts)
        return dt.to_pyarrow_table(columns=[col]).column(col).to_pylist()

    for table in ("candidates", "images", "embeddings", "index_ids"):
        got = column(table)
        assert len(got) == len(set(got)) == N, (table, len(got), len(set(got)))
        assert set(got) == ids, table
    assert set(column("images", "status")) == {"success"}
    subset = column("subsets")
    assert sorted(subset) == sorted(ids)
    # the Delta log is on S3 (S3SingleDriverLogStore wrote it), one commit per version
    log = fs.ls(f"{BUCKET}/wd/tables/candidates/_delta_log")
    assert any(p.endswith("00000000000000000000.json") for p in log), log

    # index shards written by Spark tasks to S3, searched from local copies of them
    shards = [p for p in fs.find(f"{BUCKET}/wd/indexes") if p.endswith(".index")]
    assert shards, fs.find(f"{BUCKET}/wd")
    assert out["search"]["ntotal"] == N
    assert out["search"]["hits"] and set(out["search"]["hits"]) <= ids
    assert any((tmp_path / "index-cache").iterdir())  # the shards came from S3

    # the export on S3: complete tar shards, each sample once, read back through s3fs
    tars = sorted(p for p in fs.find(f"{BUCKET}/export") if p.endswith(".tar"))
    assert len(tars) == 3  # 10 samples, 4 per shard
    assert not [p for p in fs.find(f"{BUCKET}/export") if "/." in p]  # no temporary left
    keys: list[str] = []
    for t in tars:
        with fs.open(t, "rb") as f, tarfile.open(fileobj=f) as tar:
            names = tar.getnames()
            keys += sorted({n.split(".", 1)[0] for n in names})
            assert {n.rsplit(".", 1)[-1] for n in names} >= {"jpg", "txt", "json"}
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(m).read())
                    assert meta["sample_id"] in ids
    assert len(keys) == len(set(keys)) == N
    assert first["export"]["by_status"] == {"exported": N}
    # the re-run's stages changed no row: the export finds its inputs exported, writes nothing
    assert second["export"]["by_status"] == {"up_to_date": N}


# --- which sessions get the S3 jars and settings (no JVM) ---------------------------------


def _cfg(tmp_path, **storage):
    from laion_spark.config import Config
    from laion_spark.settings import from_dict

    jars = tmp_path / "jars"
    (jars / "s3").mkdir(parents=True, exist_ok=True)
    for name in ("hadoop-aws-3.4.2.jar", "s3-2.29.52.jar"):
        (jars / "s3" / name).write_bytes(b"")
    tables = storage.pop("root", str(tmp_path / "tables"))
    return from_dict(
        Config,
        {"spark": {"jars_dir": str(jars)}, "tables": {"root": tables}, "storage": storage},
    )


def test_s3_jars_only_for_s3_tables_on_a_session_we_build(tmp_path):
    from laion_spark.session import spark_settings, submit_args

    local = spark_settings(_cfg(tmp_path))
    assert "hadoop-aws" not in local.get("spark.jars", "")  # ordinary sessions stay lean
    assert not any(k.startswith("spark.hadoop.fs.s3") for k in local)

    on_s3 = spark_settings(_cfg(tmp_path, root="s3a://b/tables"))
    jars = on_s3["spark.jars"].split(",")
    assert any(j.endswith("/s3/hadoop-aws-3.4.2.jar") for j in jars)
    assert any("delta-" in j for j in jars) or "spark.jars.packages" in on_s3  # Delta kept
    assert on_s3["spark.hadoop.fs.s3.impl"] == "org.apache.hadoop.fs.s3a.S3AFileSystem"
    # a cluster (EMR, Databricks) brings its own S3 filesystem: auto adds nothing there
    assert "hadoop-aws" not in " ".join(submit_args(_cfg(tmp_path, root="s3://b/tables")))
    assert "hadoop-aws" in spark_settings(_cfg(tmp_path, s3_jars="always"))["spark.jars"]
    never = spark_settings(_cfg(tmp_path, root="s3a://b/t", s3_jars="never"))
    assert "hadoop-aws" not in never.get("spark.jars", "")


def test_s3_endpoint_reaches_hadoop_and_the_python_clients(tmp_path):
    from laion_spark import storage
    from laion_spark.session import spark_settings

    cfg = _cfg(tmp_path, root="s3a://b/t", s3_endpoint="http://127.0.0.1:9000")
    s = spark_settings(cfg)
    assert s["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:9000"
    assert s["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert s["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert s["spark.hadoop.fs.s3a.endpoint.region"] == "us-east-1"  # explicit: no lookup
    assert s["spark.executorEnv.AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    env = storage.s3_environment(cfg.storage)
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert env["AWS_ALLOW_HTTP"] == "true"  # delta-rs
    assert env["AWS_EC2_METADATA_DISABLED"] == "true"
    # spark.conf still wins over what storage: derives
    cfg.spark.conf["spark.hadoop.fs.s3a.path.style.access"] = "false"
    assert spark_settings(cfg)["spark.hadoop.fs.s3a.path.style.access"] == "false"
    # plain AWS: no endpoint, no path style, nothing in the environment
    assert storage.s3_environment(_cfg(tmp_path).storage) == {}


def test_s3_settings_fail_with_the_dotted_key(tmp_path):
    from laion_spark.session import spark_settings
    from laion_spark.settings import ConfigError

    with pytest.raises(ConfigError, match="storage.s3_jars"):
        _cfg(tmp_path, s3_jars="sometimes")
    with pytest.raises(ConfigError, match="storage.s3_endpoint"):
        _cfg(tmp_path, s3_endpoint="127.0.0.1:9000")
    cfg = _cfg(tmp_path, root="s3a://b/t")
    cfg.spark.jars_dir = str(tmp_path / "nothing-here")
    with pytest.raises(RuntimeError, match="run scripts/setup.sh"):
        spark_settings(cfg)

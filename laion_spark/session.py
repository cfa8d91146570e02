"""One place for Spark settings: the active session on a cluster, or a local one with Delta.

On Databricks/EMR (or under spark-submit) a session already exists or the master comes
from spark-submit; we reuse it. Locally we build one with the Delta extensions and the
Delta jars that scripts/setup.sh cached (offline afterwards).
"""

from __future__ import annotations

import glob
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from pyspark.sql import SparkSession

from laion_spark import storage
from laion_spark.config import Config

log = logging.getLogger(__name__)

DELTA_VERSION = "4.3.1"
DELTA_PACKAGE = f"io.delta:delta-spark_4.1_2.13:{DELTA_VERSION}"

# Defaults that keep local mode quick and predictable; conf/*.yaml `spark.conf` wins.
_LOCAL_DEFAULTS = {
    "spark.sql.shuffle.partitions": "4",
    "spark.default.parallelism": "2",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "true",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.databricks.delta.schema.autoMerge.enabled": "true",
    "spark.sql.sources.parallelPartitionDiscovery.parallelism": "2",
    "spark.driver.memory": "4g",
    "spark.python.worker.reuse": "true",
    "spark.executorEnv.PYTHONHASHSEED": "0",
    # local runs stay on loopback: never bind to or advertise the machine's other addresses
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
}
_DELTA_SQL = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def delta_jars(jars_dir: str) -> list[str]:
    d = os.path.expanduser(jars_dir)
    jars = sorted(glob.glob(os.path.join(d, f"delta-*-{DELTA_VERSION}.jar")))
    return jars if len(jars) >= 2 else []


S3_JARS_SUBDIR = "s3"  # scripts/setup.sh: hadoop-aws and the AWS SDK modules it needs


def s3_jars(jars_dir: str) -> list[str]:
    """hadoop-aws + AWS SDK jars that scripts/setup.sh cached ([] when not fetched)."""
    d = os.path.join(os.path.expanduser(jars_dir), S3_JARS_SUBDIR)
    jars = sorted(glob.glob(os.path.join(d, "*.jar")))
    return jars if any(os.path.basename(j).startswith("hadoop-aws-") for j in jars) else []


def wants_s3_jars(cfg: Config, local: bool = True) -> bool:
    """storage.s3_jars: always; never; auto = a session we build here whose tables or workdir
    are on S3 (EMR and Databricks clusters bring their own S3 filesystem and SDK)."""
    mode = cfg.storage.s3_jars
    if mode != "auto":
        return mode == "always"
    return local and any(storage.is_s3(p) for p in (cfg.tables_root, cfg.workdir_path))


def s3_settings(cfg: Config, local: bool = True) -> dict[str, str]:
    """Hadoop s3a settings from `storage:` (endpoint, region, path style) and the same
    endpoint for the executors' Python side; the jars when wanted. spark.conf still wins."""
    st = cfg.storage
    out: dict[str, str] = {}
    if st.s3_endpoint:
        out["spark.hadoop.fs.s3a.endpoint"] = st.s3_endpoint
        out["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(
            st.s3_endpoint.startswith("https://")
        ).lower()
    path_style = st.s3_path_style if st.s3_path_style is not None else bool(st.s3_endpoint)
    if path_style:
        out["spark.hadoop.fs.s3a.path.style.access"] = "true"
    env = storage.s3_environment(st)
    if "AWS_REGION" in env:
        out["spark.hadoop.fs.s3a.endpoint.region"] = env["AWS_REGION"]
    for k, v in env.items():
        out[f"spark.executorEnv.{k}"] = v
    if wants_s3_jars(cfg, local):
        jars = s3_jars(cfg.spark.jars_dir)
        if not jars:
            raise RuntimeError(
                f"tables on S3 need hadoop-aws and the AWS SDK jars, not found in "
                f"{os.path.join(cfg.spark.jars_dir, S3_JARS_SUBDIR)}: run scripts/setup.sh "
                f"(or set storage.s3_jars=never when the cluster provides them)"
            )
        out["spark.jars"] = ",".join(jars)
        # s3:// as on EMR (there EMRFS; here s3a under the s3 name)
        out["spark.hadoop.fs.s3.impl"] = "org.apache.hadoop.fs.s3a.S3AFileSystem"
    return out


def spark_settings(cfg: Config, local: bool = True) -> dict[str, str]:
    """Spark settings for a session we build (local defaults only when `local`)."""
    s = cfg.spark
    out = dict(_LOCAL_DEFAULTS) if local else {}
    s3 = s3_settings(cfg, local)
    s3_jar_list = s3.pop("spark.jars", "")
    out.update(s3)
    if s.delta_from == "cluster":
        if s3_jar_list:
            out["spark.jars"] = s3_jar_list
        out.update({k: str(v) for k, v in s.conf.items()})
        return out
    out.update(_DELTA_SQL)
    if s.delta_from == "jars":
        jars = delta_jars(s.jars_dir)
        if jars:
            out["spark.jars"] = ",".join(jars)
        else:
            log.warning(
                "Delta jars not found in %s; resolving %s with Ivy "
                "(run scripts/setup.sh to cache them for offline use)",
                s.jars_dir,
                DELTA_PACKAGE,
            )
            out["spark.jars.packages"] = DELTA_PACKAGE
    elif s.delta_from == "packages":
        out["spark.jars.packages"] = DELTA_PACKAGE
    if s3_jar_list:
        out["spark.jars"] = ",".join(filter(None, [out.get("spark.jars"), s3_jar_list]))
    out.update({k: str(v) for k, v in s.conf.items()})
    # executors must run the same interpreter as the driver (the project's venv)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    return out


_QUIET = False
QUIET_LOG4J = os.path.join(os.path.dirname(__file__), "data", "log4j2-quiet.properties")


def quiet_console(quiet: bool = True) -> None:
    """The CLI's calm console: a local driver logs errors only and shows no Spark progress bar
    (laion_spark.progress draws one line per stage instead). `--verbose` leaves Spark as is."""
    global _QUIET
    _QUIET = quiet


def _quiet_settings(out: dict[str, str]) -> None:
    opts = out.get("spark.driver.extraJavaOptions", "")
    out["spark.driver.extraJavaOptions"] = (
        f"{opts} -Dlog4j2.configurationFile={QUIET_LOG4J}".strip()
    )
    out["spark.ui.showConsoleProgress"] = "false"


def driver_jars(cfg: Config) -> list[str]:
    """The jars a local session adds to its driver (Delta, S3 when wanted)."""
    return [j for j in spark_settings(cfg, local=True).get("spark.jars", "").split(",") if j]


def _driver_jvm_options(cfg: Config, out: dict[str, str]) -> None:
    """A local driver JVM's start-up options: the class archive setup built (laion_spark/jvm.py;
    or the tour that dumps one), and the quick JIT tier."""
    from laion_spark import jvm

    jars = [j for j in out.get("spark.jars", "").split(",") if j]
    extra = jvm.dump_options() or jvm.archive_options(jars, cfg.spark.class_archive)
    if cfg.spark.quick_jit:
        # C1 alone gets the non-tiered code cache, 48 MB, which a demo's queries fill: the
        # JVM then stops compiling and runs on interpreted; keep the tiered default's size
        extra = f"-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=240m {extra}".strip()
    if extra:
        opts = out.get("spark.driver.extraJavaOptions", "")
        out["spark.driver.extraJavaOptions"] = f"{opts} {extra}".strip()


def get_spark(cfg: Config) -> SparkSession:
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    storage.configure(cfg.storage)  # before the JVM starts: its Python workers inherit it
    builder = SparkSession.builder.appName(cfg.spark.app_name)
    local = bool(cfg.spark.master) and cfg.spark.master.startswith("local")
    if local:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    if cfg.spark.master:
        # None: spark-submit or the platform (Databricks, EMR) supplies the master
        builder = builder.master(cfg.spark.master)
    settings = spark_settings(cfg, local=local)
    if local:
        _driver_jvm_options(cfg, settings)
    if _QUIET and local:
        _quiet_settings(settings)
    for k, v in settings.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR" if _QUIET else "WARN")
    return spark


def submit_args(cfg: Config) -> list[str]:
    """spark-submit flags that give a job Delta (jars or packages) and its settings.

    JVM-level settings must be on the spark-submit command line (the driver JVM is
    already running when the job's Python code starts).
    """
    out: list[str] = []
    settings = spark_settings(cfg, local=False)
    if "spark.jars" in settings:
        out += ["--jars", settings.pop("spark.jars")]
    if "spark.jars.packages" in settings:
        out += ["--packages", settings.pop("spark.jars.packages")]
    for k, v in settings.items():
        out += ["--conf", f"{k}={v}"]
    return out


ARROW_BATCH_ROWS = "spark.sql.execution.arrow.maxRecordsPerBatch"
ARROW_BATCH_BYTES = "spark.sql.execution.arrow.maxBytesPerBatch"  # Python UDF input batches


@contextmanager
def session_conf(spark: SparkSession, settings: dict[str, str]) -> Iterator[None]:
    """Set SQL settings for the duration of a block, then put the previous values back
    (the session is shared by every stage of a run)."""
    before = {k: spark.conf.get(k, None) for k in settings}
    for k, v in settings.items():
        spark.conf.set(k, str(v))
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, v)

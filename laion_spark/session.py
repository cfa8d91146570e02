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


def spark_settings(cfg: Config, local: bool = True) -> dict[str, str]:
    """Spark settings for a session we build (local defaults only when `local`)."""
    s = cfg.spark
    out = dict(_LOCAL_DEFAULTS) if local else {}
    if s.delta_from == "cluster":
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


def get_spark(cfg: Config) -> SparkSession:
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName(cfg.spark.app_name)
    local = bool(cfg.spark.master) and cfg.spark.master.startswith("local")
    if local:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    if cfg.spark.master:
        # None: spark-submit or the platform (Databricks, EMR) supplies the master
        builder = builder.master(cfg.spark.master)
    settings = spark_settings(cfg, local=local)
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

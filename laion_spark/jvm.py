"""The local driver JVM's class archive (JDK class data sharing): a faster start, every time.

A local session spent most of its fixed cost loading and verifying classes: on the 2-core
machine the JVM took 8.4-9.5 s to a ready session and its first Delta read + anti-join
17.1-17.6 s, where later ones take about 1 s. JDK 13+ can dump the classes a run loaded
into an archive (`-XX:ArchiveClassesAtExit`) that later JVMs map instead of loading them
(`-XX:SharedArchiveFile`): 4.7-5.8 s and 11.7-13.5 s with the archive. `scripts/setup.sh`
builds it once (`python -m laion_spark.jvm`, a session that runs the kinds of query the
stages run); local sessions then use it when it exists (`spark.class_archive`, on by default). The
JVM checks the archive against its own build and class path and ignores one that does not
match, so a stale archive only costs the speed; its name carries the versions it was made
for, so an upgrade makes setup build a new one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

# quiet: the JVM otherwise warns about every class it cannot archive, or an archive it skips
_QUIET_CDS = "-Xlog:cds=off -Xlog:cds+dynamic=off"


def archive_path(jars: list[str]) -> str:
    """Where the archive for this Java, this pyspark and these extra jars lives."""
    import pyspark

    java = os.path.realpath(shutil.which("java") or os.environ.get("JAVA_HOME", "java"))
    key = "\n".join([java, pyspark.__version__, *sorted(jars)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    from laion_spark.storage import cache_root

    return str(cache_root() / "jvm" / f"driver-{pyspark.__version__}-{digest}.jsa")


def archive_options(jars: list[str], use: bool = True) -> str:
    """Driver JVM options that map the archive ('' when not used or not built yet)."""
    if not use:
        return ""
    path = archive_path(jars)
    return f"-XX:SharedArchiveFile={path} {_QUIET_CDS}" if os.path.isfile(path) else ""


def _tour(workdir: str) -> None:
    """The kinds of work the stages give the JVM: Delta create, MERGE, reads, joins, a
    window, aggregation, Python UDFs through Arrow, toPandas; its classes are archived."""
    import pandas as pd

    from laion_spark.config import load_config
    from laion_spark.session import get_spark
    from laion_spark.tables import Tables

    cfg = load_config("local", [f"workdir={workdir}", "spark.class_archive=false"])
    spark = get_spark(cfg)
    tables = Tables(spark, cfg)
    rows = pd.DataFrame({"sample_id": [f"{i:032x}" for i in range(200)], "url": "u", "text": "t"})
    df = spark.createDataFrame(rows)
    tables.upsert(df, "candidates")
    tables.upsert(df, "candidates", update=False)
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    cands = tables.read("candidates")
    w = Window.partitionBy("url").orderBy("sample_id")
    cands.withColumn("n", F.row_number().over(w)).groupBy("n").count().collect()
    cands.join(cands.select("sample_id"), "sample_id", "left_anti").count()
    cands.mapInArrow(lambda it: it, cands.schema).count()
    cands.mapInPandas(lambda it: it, cands.schema).toPandas()
    spark.sql(f"SELECT count(*) FROM delta.`{tables.location('candidates')}`").collect()
    # the JVM dumps its classes as it exits, after this process: `build` waits for its pid
    print(f"JVM_PID {spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()}")


def build(jars: list[str]) -> str:
    """Run the tour in a child JVM that dumps its classes at exit; returns the archive's
    path (written under a temporary name, renamed when complete)."""
    path = archive_path(jars)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    work = tempfile.mkdtemp(prefix="laion-spark-jvm-")
    env = dict(os.environ, LAION_SPARK_ARCHIVE_DUMP=tmp)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "laion_spark.jvm", "--tour", work],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        pids = [int(x.split()[1]) for x in done.stdout.splitlines() if x.startswith("JVM_PID ")]
        for _ in range(1200):  # the dump takes a few seconds; at most 2 minutes
            if not pids or not _alive(pids[0]):
                break
            time.sleep(0.1)
        if not os.path.isfile(tmp):
            raise RuntimeError("the JVM wrote no class archive")
        os.replace(tmp, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dump_options() -> str:
    """Options of the tour's JVM (set through LAION_SPARK_ARCHIVE_DUMP by `build`)."""
    target = os.environ.get("LAION_SPARK_ARCHIVE_DUMP")
    return f"-XX:ArchiveClassesAtExit={target} {_QUIET_CDS}" if target else ""


def main(argv: list[str]) -> int:
    if argv[:1] == ["--tour"]:
        _tour(argv[1])
        return 0
    from laion_spark.config import load_config
    from laion_spark.session import driver_jars

    path = archive_path(driver_jars(load_config("local")))
    if os.path.isfile(path) and "--force" not in argv:
        print(f"class archive up to date: {path}")
        return 0
    print(f"class archive written: {build(driver_jars(load_config('local')))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

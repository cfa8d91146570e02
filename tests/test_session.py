"""The local driver JVM's start-up options: the class archive setup builds, the quick JIT."""

from __future__ import annotations

import os

from laion_spark import jvm
from laion_spark.config import load_config
from laion_spark.session import _driver_jvm_options, driver_jars


def _options(overrides: list[str]) -> str:
    cfg = load_config("local", overrides)
    out = {"spark.jars": ",".join(driver_jars(cfg))}
    _driver_jvm_options(cfg, out)
    return out.get("spark.driver.extraJavaOptions", "")


def test_archive_mapped_when_built_and_wanted(tmp_path, monkeypatch):
    monkeypatch.setenv("LAION_SPARK_CACHE", str(tmp_path))
    monkeypatch.delenv("LAION_SPARK_ARCHIVE_DUMP", raising=False)
    assert "SharedArchiveFile" not in _options([])  # not built yet: the JVM starts as before
    path = jvm.archive_path(driver_jars(load_config("local")))
    assert path.startswith(str(tmp_path))
    os.makedirs(os.path.dirname(path))
    open(path, "wb").close()
    opts = _options([])
    assert f"-XX:SharedArchiveFile={path}" in opts and "-XX:TieredStopAtLevel=1" in opts
    assert "-Xlog:cds=off" in opts  # a stale archive is skipped silently, never a warning
    assert "SharedArchiveFile" not in _options(["spark.class_archive=false"])
    assert "TieredStopAtLevel" not in _options(["spark.quick_jit=false"])
    # the archive's name carries what it was made for: other jars, another archive
    assert jvm.archive_path(["/x/other.jar"]) != path
    # the tour that builds it dumps instead of mapping
    monkeypatch.setenv("LAION_SPARK_ARCHIVE_DUMP", str(tmp_path / "new.jsa"))
    opts = _options([])
    assert f"-XX:ArchiveClassesAtExit={tmp_path / 'new.jsa'}" in opts
    assert "SharedArchiveFile" not in opts


def test_the_suites_session_runs_with_them(spark):
    """The session every test shares was started with these options (and the archive when
    scripts/setup.sh built it, as it does in CI)."""
    runtime = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
    args = list(runtime.getInputArguments())
    assert "-XX:TieredStopAtLevel=1" in args
    # with C1 alone the JVM would size its code cache at 48 MB, which a demo fills (then it
    # stops compiling): the pools for compiled code must have the tiered default's room
    mf = spark.sparkContext._jvm.java.lang.management.ManagementFactory
    code = sum(p.getUsage().getMax() for p in mf.getMemoryPoolMXBeans()
               if "Code" in p.getName())
    assert code >= 200 * 2**20, code
    path = jvm.archive_path(driver_jars(load_config("local")))
    if os.path.isfile(path):
        assert f"-XX:SharedArchiveFile={path}" in args

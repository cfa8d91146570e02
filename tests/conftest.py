"""Shared fixtures: ONE local SparkSession with Delta for the whole test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("PYSPARK_PYTHON", os.sys.executable)  # type: ignore[attr-defined]


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def spark():
    from laion_spark.config import load_config
    from laion_spark.session import get_spark

    cfg = load_config("local")
    s = get_spark(cfg)
    yield s
    s.stop()


@pytest.fixture()
def make_cfg(tmp_path):
    """Build a Config whose tables live under this test's tmp dir: make_cfg(["a.b=c"])."""
    from laion_spark.config import load_config

    def _make(overrides: list[str] | None = None, workdir=None):
        wd = workdir or tmp_path / "wd"
        return load_config("local", [f"workdir={wd}", *(overrides or [])])

    return _make


@pytest.fixture()
def tables(spark, make_cfg):
    """A Tables registry rooted in this test's tmp dir."""
    from laion_spark.tables import Tables

    return Tables(spark, make_cfg())

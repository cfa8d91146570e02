"""Shared fixtures: ONE local SparkSession with Delta for the whole test session."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager

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


@contextmanager
def _chromium(window_size: str, logs: bool = False):
    """Headless Chromium (/usr/bin/chromium, selenium) with a throwaway profile and no
    background traffic; `logs` keeps the console and network logs (driver.get_log)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--window-size={window_size}",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(flag)
    if logs:
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
        try:
            yield driver
        finally:
            driver.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture()
def chromium():
    """`with chromium("1300,1400", logs=True) as driver:` a headless Chromium for a page test."""
    return _chromium

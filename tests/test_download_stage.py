"""The download stage end to end: real Spark, real Delta, real HTTP on 127.0.0.1."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import test_download_data as data
from pyspark.sql import functions as F

from laion_spark.demo.image_server import ImageServer
from laion_spark.download.stage import run
from laion_spark.ids import sample_id
from laion_spark.tables import Tables

FAST = [
    "download.image_size=64",
    "download.timeout_s=2.0",
    "download.read_timeout_s=0.6",
    "download.connect_timeout_s=1.0",
    "download.retries=1",
    "download.backoff_s=0.05",
    "download.max_bytes=300000",
    "download.threads=8",
    "download.partitions=2",
    "download.allow_networks=['127.0.0.1/32']",
]


def _candidates(spark, tables: Tables, urls: dict[str, str]) -> dict[str, str]:
    """Write candidates for {name: url}; returns {name: sample_id}."""
    rows = [(sample_id(u, f"caption {n}"), u, f"caption {n}") for n, u in urls.items()]
    df = spark.createDataFrame(rows, "sample_id string, url string, text string")
    tables.upsert(df, "candidates")
    return {n: sample_id(u, f"caption {n}") for n, u in urls.items()}


def _serve_everything(srv: ImageServer) -> dict[str, tuple[str, str]]:
    """{name: (url, expected status)} covering every good format and every failure."""
    big = data.jpeg(640, 480)
    blocked_port = srv.port
    cases = {
        "jpeg": (srv.add("/ok.jpg", data.jpeg()), "success"),
        "png": (srv.add("/ok.png", data.png(), "image/png"), "success"),
        "webp": (srv.add("/ok.webp", data.webp(), "image/webp"), "success"),
        "big_jpeg": (srv.add("/big.jpg", big), "success"),
        "cmyk": (srv.add("/cmyk.jpg", data.cmyk_jpeg()), "success"),
        "png16": (srv.add("/16.png", data.png16(), "image/png"), "success"),
        "alpha": (srv.add("/alpha.png", data.rgba_transparent_png(), "image/png"), "success"),
        "exif": (srv.add("/exif.jpg", data.exif_rotated_jpeg()), "success"),
        "mislabelled": (srv.add("/mis.png", data.jpeg(), "image/png"), "success"),
        "redirect_ok": (srv.redirect("/go", srv.url("/ok.jpg")), "success"),
        "rate_limited": (srv.rate_limited("/429.jpg", data.jpeg(), 1, "0"), "success"),
        "not_found": (srv.url("/missing.jpg"), "http_error"),
        "server_error": (srv.status("/500", 500), "http_error"),
        "timeout": (srv.delayed("/slow.jpg", data.jpeg(), 3.0), "timeout"),
        "slow_drip": (srv.slow_drip("/drip.jpg", data.jpeg(), 0.2, 16), "timeout"),
        "redirect_loop": (srv.redirect_loop("/loop-a", "/loop-b"), "too_many_redirects"),
        # loopback but outside the allowlist (only 127.0.0.1/32 is allowed)
        "redirect_blocked": (
            srv.redirect("/evil", f"http://127.0.0.2:{blocked_port}/ok.jpg"),
            "blocked_address",
        ),
        "direct_blocked": (f"http://127.0.0.3:{blocked_port}/ok.jpg", "blocked_address"),
        "oversized": (srv.oversized("/huge.jpg", 2_000_000), "too_large"),
        "oversized_no_length": (
            srv.oversized("/huge2.jpg", 2_000_000, declare_length=False),
            "too_large",
        ),
        "pixel_bomb": (srv.add("/bomb.png", data.pixel_bomb_png(), "image/png"), "too_large"),
        "truncated": (srv.add("/trunc.jpg", data.truncated_jpeg()), "failed_to_decode"),
        "garbage": (
            srv.add("/garbage.jpg", b"<not an image>" * 10, "image/jpeg"),
            "failed_to_decode",
        ),
        "gif": (srv.add("/a.gif", data.gif(), "image/gif"), "unsupported_format"),
        "svg": (
            srv.add("/a.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"),
            "unsupported_format",
        ),
        "empty": (srv.add("/empty.jpg", b""), "empty_body"),
        "gzip_encoded": (
            srv.add("/gz.jpg", gzip.compress(data.jpeg()), headers={"Content-Encoding": "gzip"}),
            "success",
        ),
        "html": (
            srv.add("/page.html", b"<html><body>hi</body></html>", "text/html"),
            "wrong_content_type",
        ),
        "noai": (srv.add("/noai.jpg", data.jpeg(), headers={"X-Robots-Tag": "noai"}), "opted_out"),
        "noimageindex": (
            srv.add("/nii.jpg", data.jpeg(), headers={"X-Robots-Tag": "laion-spark: noimageindex"}),
            "opted_out",
        ),
        "other_bot_noindex": (
            srv.add("/gb.jpg", data.jpeg(), headers={"X-Robots-Tag": "googlebot: noindex"}),
            "success",
        ),
        "bad_scheme": ("ftp://127.0.0.1/x.jpg", "failed_to_download"),
        "connection_refused": ("http://127.0.0.1:9/x.jpg", "failed_to_download"),
    }
    return cases


def test_every_case_gets_the_right_status_and_rerun_is_noop(spark, make_cfg):
    cfg = make_cfg(FAST)
    tables = Tables(spark, cfg)
    with ImageServer() as srv:
        cases = _serve_everything(srv)
        ids = _candidates(spark, tables, {n: u for n, (u, _) in cases.items()})
        result = run(spark, cfg, tables)
        assert result.rows_in == len(cases) == result.rows_out
        rows = {r["sample_id"]: r for r in tables.read("images").collect()}
        assert len(rows) == len(cases)
        wrong = {
            n: (rows[ids[n]]["status"], rows[ids[n]]["error_message"])
            for n, (_, want) in cases.items()
            if rows[ids[n]]["status"] != want
        }
        assert not wrong, wrong
        for n, (_, want) in cases.items():
            r = rows[ids[n]]
            if want == "success":
                assert r["image"] and (r["width"], r["height"]) == (64, 64) and r["format"] == "jpg"
                assert (
                    len(r["sha256"]) == 64
                    and r["num_bytes"] == len(r["image"])
                    and r["http_status"] == 200
                )
                assert r["error_message"] is None
            else:
                assert r["image"] is None and r["error_message"], n
        assert rows[ids["big_jpeg"]]["original_width"] == 640
        assert (rows[ids["exif"]]["original_width"], rows[ids["exif"]]["original_height"]) == (
            40,
            80,
        )
        assert (
            rows[ids["not_found"]]["http_status"] == 404
            and rows[ids["server_error"]]["http_status"] == 500
        )
        assert srv.hits["/500"] == 2  # 500 is retryable: retried once
        assert srv.hits["/ok.jpg"] >= 1 and srv.hits.get("/evil") == 1
        hits_before = sum(srv.hits.values())
        assert result.by_status["success"] == sum(1 for _, w in cases.values() if w == "success")

        # a re-run finds nothing to do and touches nothing
        again = run(spark, cfg, tables)
        assert again.rows_in == 0 and sum(srv.hits.values()) == hits_before
        assert tables.read("images").count() == len(cases)

        # --retry-failed fetches only the retryable failures, and the server is fixed now
        srv.add("/500", data.jpeg())
        retried = run(spark, cfg, tables, retry_failed=True)
        from laion_spark.download.worker import RETRYABLE_STATUSES

        assert set(RETRYABLE_STATUSES) == {
            "http_error",
            "timeout",
            "failed_to_download",
            "empty_body",
        }
        retry_names = {n for n, (_, w) in cases.items() if w in RETRYABLE_STATUSES}
        assert retried.rows_in == len(retry_names)
        after = {r["sample_id"]: r["status"] for r in tables.read("images").collect()}
        assert after[ids["server_error"]] == "success" and after[ids["noai"]] == "opted_out"
        assert tables.read("images").count() == len(cases)


def test_taken_down_hash_and_url_never_stored(spark, make_cfg):
    import hashlib

    cfg = make_cfg(FAST + ["download.resize_mode=no", "download.skip_reencode=true"])
    tables = Tables(spark, cfg)
    img = data.jpeg(70, 50)
    with ImageServer() as srv:
        ids = _candidates(
            spark,
            tables,
            {
                "hashed": srv.add("/h.jpg", img),
                "url": srv.add("/u.jpg", data.png(), "image/png"),
                "kept": srv.add("/k.jpg", data.webp(), "image/webp"),
            },
        )
        td = spark.createDataFrame(
            [("r1", "sha256", hashlib.sha256(img).hexdigest()), ("r2", "url", srv.url("/u.jpg"))],
            "request_id string, kind string, value string",
        )
        tables.upsert(td, "takedowns")
        res = run(spark, cfg, tables)
        rows = {r["sample_id"]: r for r in tables.read("images").collect()}
        assert (
            rows[ids["hashed"]]["status"] == "taken_down" and rows[ids["hashed"]]["image"] is None
        )
        assert ids["url"] not in rows and srv.hits["/u.jpg"] == 0  # excluded before fetching
        assert rows[ids["kept"]]["status"] == "success" and rows[ids["kept"]]["format"] == "jpg"
        assert res.rows_in == 2


_CHILD = textwrap.dedent(
    """
    import sys
    from laion_spark.config import load_config
    from laion_spark.session import get_spark
    from laion_spark.tables import Tables
    from laion_spark.download.stage import run
    cfg = load_config("local", sys.argv[1:])
    spark = get_spark(cfg)
    run(spark, cfg, Tables(spark, cfg))
    print("CHILD FINISHED", flush=True)
    """
)


def _committed_rows(log_dir: Path) -> int:
    """Rows added by MERGE commits in the images Delta log (without a Spark read)."""
    import json

    n = 0
    for f in sorted(log_dir.glob("*.json")):
        for line in f.read_text().splitlines():
            d = json.loads(line)
            m = d.get("commitInfo", {}).get("operationMetrics", {})
            n += int(m.get("numTargetRowsInserted", 0))
    return n


def test_partial_run_then_rerun_gives_one_row_per_sample(spark, make_cfg):
    """An interrupted run simulated in-process: only part is written, the re-run completes."""
    cfg = make_cfg(FAST + ["download.rows_per_commit=2", "download.partitions=1"])
    tables = Tables(spark, cfg)
    with ImageServer() as srv:
        ids = _candidates(
            spark, tables, {f"p{i}": srv.add(f"/p{i}.jpg", data.jpeg(60 + i, 50)) for i in range(5)}
        )
        first = run(spark, cfg, tables, limit=2)
        assert first.rows_in == 2 and tables.read("images").count() == 2
        cfg2 = make_cfg(FAST + ["download.partitions=1"], workdir=cfg.workdir)
        rest = run(spark, cfg2, Tables(spark, cfg2))
        assert rest.rows_in == 3
        imgs = tables.read("images")
        assert imgs.count() == 5 and imgs.select("sample_id").distinct().count() == 5
        assert {r["sample_id"] for r in imgs.collect()} == set(ids.values())
        assert all(srv.hits[f"/p{i}.jpg"] == 1 for i in range(5))  # nothing fetched twice


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_killed_mid_run_then_rerun_gives_one_row_per_sample(spark, make_cfg, tmp_path):
    n = 12
    workdir = tmp_path / "killed"
    overrides = FAST + ["download.rows_per_commit=3", "download.partitions=1", "download.threads=2"]
    cfg = make_cfg(overrides, workdir=workdir)
    tables = Tables(spark, cfg)
    with ImageServer() as srv:
        urls = {f"s{i}": srv.add(f"/k{i}.jpg", data.jpeg(80 + i, 60), delay=0.3) for i in range(n)}
        ids = _candidates(spark, tables, urls)
        log_dir = Path(tables.location("images")) / "_delta_log"
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, f"workdir={workdir}", *overrides],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.time() + 1200  # the shared 2-core machine can be very slow
            while time.time() < deadline and child.poll() is None:
                if log_dir.exists() and _committed_rows(log_dir) > 0:
                    break
                time.sleep(0.1)
            # kill the whole child (its JVM and Python workers) right after the first commit
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
        out = child.stdout.read().decode(errors="replace") if child.stdout else ""
        assert "CHILD FINISHED" not in out, "the child finished before it could be killed"
        partial = tables.read("images").count()
        assert 0 < partial < n, out[-2000:]
        # the re-run: one commit for the rest (fewer Spark jobs than 3 per commit)
        cfg2 = make_cfg(FAST + ["download.partitions=1"], workdir=workdir)
        res = run(spark, cfg2, Tables(spark, cfg2))
        assert res.rows_in == n - partial
        imgs = tables.read("images")
        assert imgs.count() == n
        assert imgs.select("sample_id").distinct().count() == n
        assert set(r["sample_id"] for r in imgs.collect()) == set(ids.values())
        assert imgs.where(F.col("status") != "success").count() == 0

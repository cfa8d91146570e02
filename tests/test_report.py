"""`laion-spark report` on a generated pool with planted rates (no pipeline run).

The pool is written straight into the tables (laion_spark.report.generated); one report is
built for the module and checked against the planted rates, against independent SQL over
the Delta versions it recorded, in real headless Chromium, and for reproducibility after
the tables changed. The index-probe path is checked on the demo (tests/test_demo.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from deltalake import DeltaTable

from laion_spark.report.build import build_report
from laion_spark.report.generated import THRESHOLDS, write_generated_pool
from laion_spark.tables import Tables

TERMS = "# test terms\nlighthouse\ncat\nzeppelin\n"
N = 3000


def _numbers(report: dict) -> dict:
    """Everything but what legitimately differs between two runs at the same versions."""
    # (a report pinned by --as-of has no reuse key: it is always made again)
    skip = ("generated", "config", "thumbnails", "reuse_key")
    return {k: v for k, v in report.items() if k not in skip}


@pytest.fixture(scope="module")
def pool(spark, tmp_path_factory):
    from laion_spark.config import load_config

    wd = tmp_path_factory.mktemp("report")
    terms = wd / "terms.txt"
    terms.write_text(TERMS)
    cfg = load_config("local", [f"workdir={wd}", f"report.terms={terms}"])
    tables = Tables(spark, cfg)
    planted = write_generated_pool(spark, cfg, tables, n=N, images=True)
    versions_before = {
        n: DeltaTable(tables.location(n)).version()
        for n in ("candidates", "images", "embeddings", "scores", "subsets", "runs")
    }
    first = build_report(spark, cfg, tables, compare="safety")
    return {
        "cfg": cfg,
        "wd": wd,
        "tables": tables,
        "planted": planted,
        "first": first,
        "versions_before": versions_before,
    }


@pytest.fixture(scope="module")
def rerun(spark, pool):
    """The tables change (new candidates, a new run), then the report is made again at the
    first report's versions (with safe thumbnails on), and once more at the latest."""
    from laion_spark.config import load_config
    from laion_spark.report.generated import generated_frames, spark_frame

    tables = pool["tables"]
    frames, _ = generated_frames(n=50, seed=99)
    tables.upsert(spark_frame(spark, "candidates", frames["candidates"]), "candidates")
    cfg = load_config(
        "local",
        [f"workdir={pool['wd']}", f"report.terms={pool['wd'] / 'terms.txt'}", "report.thumbnails=6"],
    )
    pinned = build_report(
        spark, cfg, tables, compare="safety", as_of=pool["first"].files["report.json"]
    )
    latest = build_report(spark, pool["cfg"], tables, probes=False)
    return {"pinned": pinned, "latest": latest, "cfg": cfg}


def test_report_recovers_the_planted_rates(pool):
    p, rep = pool["planted"], pool["first"].report
    pop = rep["population"]
    assert pop["rows"] == N
    # binomial: a few standard deviations at ~2700 tagged samples
    assert abs(pop["nsfw_share"] - p.expected_nsfw_share) < 0.03
    assert abs(pop["toxic_share"] - p.toxic_rate) < 0.02
    assert pop["toxic"] > 50
    # toxicity came from the word list, and the report says so
    assert rep["toxicity"]["kind"] == "word list"
    assert all(k.startswith("wordlist:") for k in rep["toxicity"]["models"])
    # the keyword probe finds the planted term's elevated NSFW share, the control stays near
    # the base rate, an absent term matches nothing
    cap = rep["probes"]["caption"]
    term = cap[p.term]
    assert term["n"] > 100
    assert abs(term["nsfw_share"] - p.term_nsfw_rate) < 0.12
    assert term["elevation"]["nsfw"] > 3
    assert 0.5 < cap["cat"]["elevation"]["nsfw"] < 1.6
    assert cap["zeppelin"]["n"] == 0 and cap["zeppelin"]["nsfw_share"] is None
    # no index was built here: the index probes say why they did not run
    assert rep["probes"]["index"]["status"] == "skipped"
    # thresholds: what curate recorded in `runs`, not a default
    assert rep["thresholds"]["clip"]["values"] == THRESHOLDS
    assert "applied" in rep["thresholds"]["clip"]["source"]
    # --compare safety: the safe subset has no NSFW/UNSURE tags, the whole pool has
    c = rep["compare"]
    assert c["b"]["metrics"]["nsfw_share"] == 0 and c["a"]["metrics"]["nsfw_share"] > 0.05
    assert c["difference_b_minus_a"]["nsfw_share"] < 0


def test_numbers_equal_independent_sql(spark, pool):
    rep = pool["first"].report
    v = {n: t["version"] for n, t in rep["tables"].items()}
    loc = {n: t["location"] for n, t in rep["tables"].items()}

    def tbl(name):
        return f"delta.`{loc[name]}` VERSION AS OF {v[name]}"

    def one(sql):
        return spark.sql(sql).first()[0]

    cand, sc, emb, img = tbl("candidates"), tbl("scores"), tbl("embeddings"), tbl("images")
    pop, fun = rep["population"], rep["funnel"]
    assert pop["rows"] == one(f"SELECT count(*) FROM {cand}")
    assert pop["NSFW"] == one(
        f"SELECT count(*) FROM {cand} c JOIN {sc} s ON c.sample_id = s.sample_id "
        "WHERE s.nsfw_tag = 'NSFW'"
    )
    nsfw = one(
        f"SELECT avg(CASE WHEN nsfw_tag = 'NSFW' THEN 1D ELSE 0D END) FROM {sc} "
        "WHERE nsfw_tag IS NOT NULL"
    )
    assert pop["nsfw_share"] == pytest.approx(float(nsfw), abs=1e-6)
    toxic = one(
        f"SELECT avg(CASE WHEN toxicity > 0.5 THEN 1D ELSE 0D END) FROM {sc} "
        "WHERE toxicity IS NOT NULL"
    )
    assert pop["toxic_share"] == pytest.approx(float(toxic), abs=1e-6)
    assert pop["punsafe_mean"] == pytest.approx(one(f"SELECT avg(punsafe) FROM {sc}"), abs=1e-6)
    steps = {s["step"]: s["count"] for s in fun["steps"]}
    assert steps["pages"] == one(f"SELECT sum(pages) FROM {tbl('extract_stats')}")
    assert steps["downloaded"] == one(f"SELECT count(*) FROM {img} WHERE status = 'success'")
    assert steps["filtered (clip_filter)"] == one(
        f"SELECT count(*) FROM {tbl('subsets')} WHERE subset = 'clip_filter'"
    )
    assert fun["download_status"]["timeout"] == one(
        f"SELECT count(*) FROM {img} WHERE status = 'timeout'"
    )
    assert fun["extract"]["rejected"]["caption_too_short"] == N // 5
    top = spark.sql(
        f"SELECT regexp_replace(lower(parse_url(url, 'HOST')), '^www\\\\.', '') AS d, count(*) AS n "
        f"FROM {cand} GROUP BY d ORDER BY n DESC, d LIMIT 3"
    ).collect()
    assert [(r["key"], r["count"]) for r in rep["rankings"]["domain"][:3]] == [
        (r["d"], r["n"]) for r in top
    ]
    langs = {r[0] or "(none)": r[1] for r in spark.sql(
        f"SELECT language_group, count(*) FROM {cand} GROUP BY language_group"
    ).collect()}
    assert {r["key"]: r["count"] for r in rep["rankings"]["language_group"]} == langs
    dups = one(f"SELECT count(sha256) - count(DISTINCT sha256) FROM {img}")
    assert rep["duplicates"]["exact_image_duplicates"] == dups > 0
    # a sweep point and a histogram bin
    point = next(p for p in rep["sensitivity"]["points"] if p["threshold"] == 0.28)
    assert point["kept"] == one(
        f"SELECT count(*) FROM {emb} WHERE status = 'success' AND similarity >= 0.28"
    )
    h = rep["histograms"]["punsafe"]
    assert h["counts"][10] == one(f"SELECT count(*) FROM {sc} WHERE punsafe >= 0.5 AND punsafe < 0.55")
    assert h["n"] == one(f"SELECT count(punsafe) FROM {sc}")
    assert rep["probes"]["caption"]["lighthouse"]["n"] == one(
        f"SELECT count(*) FROM {cand} WHERE text LIKE '%lighthouse%'"
    )
    assert rep["takedowns"]["removed_rows"] == {"candidates": 2, "images": 2}


def test_versions_recorded_and_a_rerun_at_them_is_identical(pool, rerun):
    first = pool["first"].report
    for name, version in pool["versions_before"].items():
        assert first["tables"][name]["version"] == version, name
    pinned, latest = rerun["pinned"].report, rerun["latest"].report
    assert {n: t["version"] for n, t in pinned["tables"].items()} == {
        n: t["version"] for n, t in first["tables"].items()
    }
    assert _numbers(pinned) == {**_numbers(first), "as_of": pinned["as_of"]}
    # the tables did change: the latest report sees the new candidates
    assert latest["population"]["rows"] == N + 50
    assert latest["tables"]["candidates"]["version"] > first["tables"]["candidates"]["version"]
    # serve links the newest complete report under <workdir>/reports
    from laion_spark.report.output import latest_report

    partial = Path(pool["wd"]) / "reports" / "99999999T999999Z"
    partial.mkdir(parents=True)
    (partial / "report.json").write_text("{}")  # a report still being written
    assert latest_report(pool["cfg"]) == rerun["latest"].files["index.html"]


def test_unchanged_tables_reuse_the_latest_report(spark, pool, rerun, capsys):
    """Made again with nothing changed, the latest report is returned, not recomputed; a
    stage run that changed nothing (a new `runs` row) does not count as a change; a new
    request or a data change gives a new key."""
    from datetime import UTC, datetime

    from laion_spark.cli import main
    from laion_spark.report.build import reuse_key
    from laion_spark.stage import StageResult, record_run

    cfg, tables, latest = pool["cfg"], pool["tables"], rerun["latest"]
    assert not latest.reused and latest.report["reuse_key"]
    record_run(tables, cfg, StageResult("curate", notes={"skipped": "nothing changed"}), {},
               datetime.now(UTC))
    again = build_report(spark, cfg, tables, probes=False)
    assert again.reused and again.files == latest.files
    assert again.report == json.loads(Path(latest.files["report.json"]).read_text())
    # the CLI says so (and where the folder is)
    terms = f"report.terms={pool['wd'] / 'terms.txt'}"  # the same config as the pool's
    assert main(["report", "--set", f"workdir={pool['wd']}", "--set", terms, "--no-probes"]) == 0
    out = capsys.readouterr().out
    assert "up to date" in out and latest.files["index.html"] in out
    # another request, another key; so after a change to a table the report reads
    key = latest.report["reuse_key"]
    assert reuse_key(cfg, tables, None, None, False) == key
    assert reuse_key(cfg, tables, "clip_filter", None, False) != key
    assert reuse_key(cfg, tables, None, None, None) != key
    assert pool["first"].report["reuse_key"] != key  # before the new candidates


def test_thumbnails_only_of_safe_samples(spark, pool, rerun):
    shown = rerun["pinned"].report["thumbnails"]
    assert len(shown) == 6
    assert pool["first"].report["thumbnails"] == []  # off by default
    rep = pool["first"].report
    loc, v = rep["tables"]["scores"]["location"], rep["tables"]["scores"]["version"]
    rows = spark.sql(
        f"SELECT sample_id, punsafe, nsfw_tag, flags FROM delta.`{loc}` VERSION AS OF {v}"
    ).collect()
    by_id = {r["sample_id"]: r for r in rows}
    for sid in shown:
        r = by_id[sid]
        assert r["punsafe"] is not None and r["punsafe"] < 0.5
        assert r["nsfw_tag"] == "UNLIKELY" and "drop" not in r["flags"]


def test_card_yaml_header(pool):
    text = Path(pool["first"].files["README.md"]).read_text()
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    for key in ("pretty_name", "license", "language", "size_categories", "task_categories",
                "source_datasets", "license_details"):
        assert key in header, key
    assert header["size_categories"] == ["1K<n<10K"]
    assert set(header["language"]) == {"en", "de", "fr", "es"}
    assert header["license"] == "other" and "cc-by-4.0" in header["license_details"]
    assert "text-to-image" in header["task_categories"]
    for section in ("## Dataset summary", "## How it was built", "## Statistics",
                    "## Known risks and limitations", "## Requesting removal"):
        assert section in text
    assert "laion-spark takedown" in text and "word-list fallback" in text
    assert "`lighthouse`" in text  # the probe's finding is in the risks


def test_html_opens_offline_in_chromium(pool, rerun, chromium):
    from io import BytesIO

    from PIL import Image
    from selenium.webdriver.common.by import By

    with chromium("1300,1400", logs=True) as driver:
        for result, thumbs in ((pool["first"], 0), (rerun["pinned"], 6)):
            driver.get_log("performance")  # drain: the browser's own start-up pages
            page = Path(result.files["index.html"]).resolve().as_uri()
            driver.get(page)
            assert driver.execute_script("return document.readyState") == "complete"
            assert "Dataset report" in driver.title
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert errors == []
            # every request the page made: the file itself and data: images, nothing else;
            # and nothing at all left the machine (chrome:// are the browser's own pages)
            urls, everything = [], []
            for entry in driver.get_log("performance"):
                msg = json.loads(entry["message"])["message"]
                if msg["method"] == "Network.requestWillBeSent":
                    url = msg["params"]["request"]["url"]
                    everything.append(url)
                    if msg["params"].get("documentURL") == page:
                        urls.append(url)
            assert page in urls and any(u.startswith("data:image/png") for u in urls), urls
            assert all(u.startswith(("file:", "data:")) for u in urls), urls
            assert not [u for u in everything if u.startswith(("http:", "https:", "ws"))]
            plots = driver.find_elements(By.CSS_SELECTOR, "img.plot")
            assert len(plots) >= 11
            for img in plots:
                w, h = int(img.get_attribute("width")), int(img.get_attribute("height"))
                natural = driver.execute_script(
                    "return [arguments[0].complete, arguments[0].naturalWidth, "
                    "arguments[0].naturalHeight]", img
                )
                assert natural == [True, w, h], img.get_attribute("id")
                shot = Image.open(BytesIO(img.screenshot_as_png)).convert("L")
                assert abs(shot.width - w) <= 2 and abs(shot.height - h) <= 2, shot.size
                px = np.asarray(shot, dtype=float)
                # drawn: dark strokes on a light background, not a blank or broken image
                assert px.std() > 10 and (px < 100).mean() > 0.002, img.get_attribute("id")
            shown = driver.find_elements(By.CSS_SELECTOR, "img.thumb")
            assert len(shown) == thumbs
            for t in shown:
                assert driver.execute_script("return arguments[0].naturalWidth", t) == 32


def test_cli_refuses_what_it_cannot_report(pool, capsys):
    from laion_spark.cli import main

    base = ["report", "--set", f"workdir={pool['wd']}", "--no-probes"]
    assert main([*base, "--subset", "nope"]) == 2
    err = capsys.readouterr().err
    assert "--subset nope" in err and "clip_filter" in err and "safety" in err
    assert main([*base, "--as-of", "not a time"]) == 2
    assert "not a version" in capsys.readouterr().err
    assert main([*base, "--as-of", "candidates=999"]) == 2
    assert "has versions 0.." in capsys.readouterr().err


def test_report_settings_name_the_key():
    from laion_spark.config import load_config
    from laion_spark.settings import ConfigError

    with pytest.raises(ConfigError, match="report.sweep"):
        load_config("local", ["report.sweep=[0.2, 0.3]"])
    with pytest.raises(ConfigError, match="report.probe_k"):
        load_config("local", ["report.probe_k=0"])
    with pytest.raises(ConfigError, match="unknown key report.bogus"):
        load_config("local", ["report.bogus=1"])

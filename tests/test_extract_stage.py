"""Extract stage on Spark + Delta: idempotent re-runs, stats rows, incremental files,
takedowns, URL dedup, and parquet import for LAION and DataComp layouts."""

from __future__ import annotations

import gzip

import pandas as pd
import pytest
from shared_data import WHIRLWIND_WARC

from laion_spark.demo.crawl import write_synthetic_crawl
from laion_spark.extract.stage import import_metadata, run
from laion_spark.ids import sample_id

CC = str(WHIRLWIND_WARC)


def _pages(n: int) -> list[dict]:
    return [
        {
            "url": f"http://127.0.0.1:9/page/{k}.html",
            "images": [
                (f"http://127.0.0.1:9/img/{k % 3}.jpg", f"A green star picture {k % 3}"),
                (f"http://127.0.0.1:9/img/x{k}.jpg", f"A yellow ring picture {k}"),
            ],
            "license": "https://creativecommons.org/licenses/by/4.0/",
        }
        for k in range(n)
    ]


# the two ways a run goes: through Spark, or in this process with delta-rs (small local runs)
ENGINES = {"spark": ["extract.local_max_bytes=0"], "local": []}


@pytest.mark.parametrize("engine", list(ENGINES))
def test_stage_twice_one_row_per_sample_and_stats(spark, make_cfg, tables, tmp_path, engine):
    crawl = write_synthetic_crawl(str(tmp_path / "crawl"), _pages(6))
    bad = tmp_path / "broken.warc.wat.gz"
    bad.write_bytes(open(crawl["wat"], "rb").read()[:-30])
    cfg = make_cfg(ENGINES[engine])
    inputs = [crawl["wat"], crawl["warc"], CC, str(bad), str(tmp_path / "missing.warc.gz")]
    r1 = run(spark, cfg, tables, inputs=inputs)
    assert r1.notes["engine"] == engine
    cands = tables.read("candidates")
    n = cands.count()
    # 3 shared star images + 6 ring images from the crawl (WAT and WARC agree) + 5 real ones
    assert n == 3 + 6 + 5
    assert cands.select("sample_id").distinct().count() == n
    assert r1.rows_out == n and r1.by_status["inserted"] == n
    assert r1.notes["files"] == 5 and r1.notes["failed_files"] == 1
    assert r1.error is None  # one missing file among readable ones: the run did its job
    row = cands.where("url = 'http://127.0.0.1:9/img/x1.jpg'").collect()[0]
    assert row["sample_id"] == sample_id(row["url"], row["text"])
    assert row["license"] == "cc-by-4.0" and row["crawl_id"] == "CC-MAIN-DEMO"
    assert row["source_format"] in ("wat", "warc") and row["language_group"] in (
        "en",
        "multi",
        "nolang",
    )
    stats = {r["source_file"]: r for r in tables.read("extract_stats").collect()}
    assert len(stats) == 5
    assert stats[str(bad)]["status"] == "partial" and stats[str(bad)]["bad_records"] >= 1
    assert stats[str(tmp_path / "missing.warc.gz")]["status"] == "failed"
    assert stats[CC]["pairs"] == 5 and stats[CC]["rejected"] == {"no_alt": 6, "bad_extension": 2}
    assert stats[CC]["crawl_id"] == "CC-MAIN-2024-22"

    # second run: done files skipped, only the failed one retried; nothing new
    r2 = run(spark, cfg, tables, inputs=inputs)
    assert r2.notes["skipped_files"] == 4 and r2.rows_out == 0
    # forced full re-run: still exactly one row per sample_id
    r3 = run(spark, cfg, tables, inputs=inputs, reprocess=True)
    assert r3.rows_in == r1.rows_in and r3.rows_out == 0
    assert tables.read("candidates").count() == n
    assert tables.read("extract_stats").count() == 5


@pytest.mark.parametrize("engine", list(ENGINES))
def test_stage_dedup_by_url_and_takedowns(spark, make_cfg, tables, tmp_path, engine):
    pages = [
        {
            "url": "http://127.0.0.1:9/p.html",
            "images": [
                ("http://127.0.0.1:9/img/1.jpg", "First caption here"),
                ("http://127.0.0.1:9/img/1.jpg", "Second caption here"),
                ("http://blocked.example/img/2.jpg", "A blocked picture"),
            ],
        }
    ]
    crawl = write_synthetic_crawl(str(tmp_path / "c"), pages)
    spark.createDataFrame(
        [("t1", "domain", "blocked.example", "test", None, None)],
        "request_id string, kind string, value string, reason string, "
        "removed map<string,long>, requested_at timestamp",
    ).write.format("delta").save(tables.location("takedowns"))
    cfg = make_cfg(["extract.dedup_by_url=true", *ENGINES[engine]])
    r = run(spark, cfg, tables, inputs=[crawl["wat"]])
    assert r.notes["engine"] == engine
    rows = tables.read("candidates").collect()
    assert [(x["url"], x["text"]) for x in rows] == [
        ("http://127.0.0.1:9/img/1.jpg", "First caption here")
    ]
    # the second caption of the same URL is dropped in the worker, the blocked domain in Spark
    assert r.by_status["rejected:duplicate_url_in_page"] == 1
    assert r.rows_in == 2 and r.rows_out == 1
    # a URL already in candidates (here under another caption, from another file) is not
    # added again
    again = write_synthetic_crawl(
        str(tmp_path / "c2"),
        [
            {
                "url": "http://127.0.0.1:9/q.html",
                "images": [
                    ("http://127.0.0.1:9/img/1.jpg", "Third caption here"),
                    ("http://127.0.0.1:9/img/3.jpg", "A new picture here"),
                ],
            }
        ],
    )
    r2 = run(spark, cfg, tables, inputs=[again["wat"]])
    assert r2.rows_in == 2 and r2.rows_out == 1
    assert sorted(x["text"] for x in tables.read("candidates").collect()) == [
        "A new picture here",
        "First caption here",
    ]


def test_local_and_spark_paths_write_the_same_rows(spark, make_cfg, tmp_path):
    """The demo's crawl (LAION rules, language id, junk links, four languages) and the real
    Common Crawl record, extracted both ways into two workdirs: equal tables."""
    from laion_spark.demo.run import demo_pages
    from laion_spark.tables import Tables

    pages, _, _ = demo_pages(40, "http://127.0.0.1:9")
    crawl = write_synthetic_crawl(str(tmp_path / "crawl"), pages)
    inputs = [crawl["wat"], crawl["warc"], CC]
    got = {}
    for engine, sets in ENGINES.items():
        for dedup in ("false", "true"):
            cfg = make_cfg([*sets, f"extract.dedup_by_url={dedup}"], tmp_path / f"{engine}{dedup}")
            t = Tables(spark, cfg)
            r = run(spark, cfg, t, inputs=inputs)
            assert r.notes["engine"] == engine
            cands = t.read("candidates").drop("extracted_at").toPandas()
            stats = t.read("extract_stats").drop("seconds", "finished_at").toPandas()
            key = lambda df, k: df.sort_values(k).reset_index(drop=True)  # noqa: E731
            got[engine, dedup] = (key(cands, "sample_id"), key(stats, "source_file"), r)
    for dedup in ("false", "true"):
        (c1, s1, r1), (c2, s2, r2) = got["spark", dedup], got["local", dedup]
        assert len(c1) > 100
        pd.testing.assert_frame_equal(c1, c2)
        for m in ("rejected", "errors"):  # maps: equal as dicts (their order is the writer's)
            s1[m], s2[m] = s1[m].map(dict), s2[m].map(dict)
        assert s1.to_dict("records") == s2.to_dict("records")
        assert (r1.rows_in, r1.rows_out, r1.by_status) == (r2.rows_in, r2.rows_out, r2.by_status)
    cands, _, r = got["local", "false"]
    assert r.rows_in > len(cands)  # the WAT and the WARC yield the same pairs: one row each
    assert set(cands["source_file"]) == {crawl["warc"], CC}  # the first file in order


def test_import_laion_and_datacomp_parquet(spark, make_cfg, tables, tmp_path):
    laion = pd.DataFrame(
        {
            "SAMPLE_ID": [101, 102, 103],
            "URL": ["http://127.0.0.1:9/a.jpg", "http://127.0.0.1:9/b.jpg", None],
            "TEXT": ["A cat on a mat", "Ein Hund im Park", "no url"],
            "WIDTH": [640, 800, 10],
            "HEIGHT": [480, 600, 10],
            "similarity": [0.31, 0.29, 0.1],
            "punsafe": [0.01, 0.2, 0.0],
            "pwatermark": [0.1, 0.9, 0.0],
            "LANGUAGE": ["en", "de", ""],
            "LICENSE": ["?", "cc-by", "?"],
        }
    )
    datacomp = pd.DataFrame(
        {
            "uid": ["u1", "u2"],
            "url": ["http://127.0.0.1:9/c.jpg", "http://127.0.0.1:9/a.jpg"],
            "text": ["A red bicycle against a wall", "A cat on a mat"],
            "original_width": [1024, 640],
            "original_height": [768, 480],
            "clip_b32_similarity_score": [0.33, 0.31],
            "clip_l14_similarity_score": [0.3, 0.29],
            "sha256": ["ab" * 32, "cd" * 32],
        }
    )
    lp, dp = tmp_path / "laion.parquet", tmp_path / "datacomp.parquet"
    laion.to_parquet(lp)
    datacomp.to_parquet(dp)
    cfg = make_cfg()
    r = import_metadata(spark, cfg, tables, str(lp), "laion")
    assert r.rows_in == 3 and r.rows_out == 2 and r.by_status["missing_url_or_text"] == 1
    r = import_metadata(spark, cfg, tables, str(dp), "datacomp")
    assert r.rows_out == 1  # a.jpg + same caption is the same sample_id as LAION's row
    import_metadata(spark, cfg, tables, str(dp), "datacomp")  # re-import: no duplicates
    rows = {x["url"]: x for x in tables.read("candidates").collect()}
    assert len(rows) == 3
    b = rows["http://127.0.0.1:9/b.jpg"]
    assert b["original_id"] == "102" and b["original_width"] == 800 and b["language"] == "de"
    assert b["language_group"] == "multi" and b["source_format"] == "laion"
    assert b["original_meta"]["pwatermark"] == "0.9" and b["license"] == "cc-by"
    c = rows["http://127.0.0.1:9/c.jpg"]
    assert (
        c["original_id"] == "u1"
        and c["original_height"] == 768
        and c["source_format"] == "datacomp"
    )
    assert c["original_meta"]["clip_b32_similarity_score"] == "0.33"
    assert c["language"] == "en" and c["sample_id"] == sample_id(c["url"], c["text"])
    a = rows["http://127.0.0.1:9/a.jpg"]
    assert a["original_id"] == "u1" or a["original_id"] in ("101", "u2")


def test_run_with_nothing_to_read_is_an_error(spark, make_cfg, tables, tmp_path, capsys):
    from laion_spark.cli import main

    cfg = make_cfg()
    r = run(spark, cfg, tables, inputs=[])
    assert r.error.startswith("no input files: set extract.inputs")
    arc = tmp_path / "old.arc.gz"
    arc.write_bytes(gzip.compress(b"filedesc://IA-1.arc 0.0.0.0 19960923142103 text/plain 9\n"))
    missing = str(tmp_path / "missing.warc.gz")
    r = run(spark, cfg, tables, inputs=[missing, str(arc)])
    assert r.error.startswith("all 2 input file(s) failed, none was read; first: ")
    assert r.notes["failed_files"] == 1 and r.notes["unsupported_files"] == 1
    stats = {x["source_file"]: x for x in tables.read("extract_stats").collect()}
    assert stats[str(arc)]["status"] == "unsupported_format"
    assert "No such file or directory" in stats[missing]["error_message"]
    # the ARC file is final (not retried); the missing one is retried and still fails
    r = run(spark, cfg, tables, inputs=[missing, str(arc)])
    assert r.notes["skipped_files"] == 1 and r.error
    # the command line exits 1 and says why on stderr
    workdir = f"workdir={tmp_path / 'cli'}"
    assert main(["run", "extract", "--set", workdir]) == 1
    assert "stage extract failed: no input files" in capsys.readouterr().err

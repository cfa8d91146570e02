"""`laion-spark sql`: DataFusion (no JVM) and Spark SQL give the same rows over the same tables."""

from __future__ import annotations

import datetime as dt

import pytest

from laion_spark.sql import query, render, table_counts

QUERIES = [
    "SELECT status, count(*) AS n FROM images GROUP BY status ORDER BY status",
    "SELECT c.text, i.width, i.sha256 FROM candidates c JOIN images i USING (sample_id) "
    "WHERE i.status = 'success' ORDER BY c.text",
    "SELECT sample_id, image, num_bytes FROM images WHERE image IS NOT NULL ORDER BY sample_id",
    "SELECT run_id, by_status['ok'] AS ok, rows_in FROM runs ORDER BY run_id",
    "SELECT sample_id, flags, score_models FROM scores ORDER BY sample_id",
    "SELECT sample_id, downloaded_at FROM images ORDER BY sample_id",
    "SELECT language_group, round(avg(language_score), 4) AS s, max(text) AS t "
    "FROM candidates GROUP BY language_group ORDER BY language_group",
]


def _norm(v):
    """Engine-neutral value: maps as sorted pairs, timestamps in UTC, floats rounded."""
    if isinstance(v, list) and v and isinstance(v[0], tuple):
        return sorted(v)
    if isinstance(v, dt.datetime):
        return (
            v.replace(tzinfo=None)
            if v.tzinfo is None
            else v.astimezone(dt.UTC).replace(tzinfo=None)
        )
    if isinstance(v, float):
        return round(v, 5)
    return v


@pytest.fixture(scope="module")
def small_tables(spark, tmp_path_factory):
    from laion_spark.config import load_config
    from laion_spark.tables import Tables

    cfg = load_config("local", [f"workdir={tmp_path_factory.mktemp('sql')}"])
    tables = Tables(spark, cfg)
    t0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    ids = [f"{i:032x}" for i in range(6)]
    tables.upsert(
        spark.createDataFrame(
            [
                (
                    s,
                    f"http://127.0.0.1/{i}.jpg",
                    f"caption {i} é",
                    "en" if i % 2 else "multi",
                    0.5 + i / 10,
                )
                for i, s in enumerate(ids)
            ],
            "sample_id string, url string, text string, language_group string, language_score float",
        ),
        "candidates",
    )
    tables.upsert(
        spark.createDataFrame(
            [
                (
                    s,
                    "success" if i < 4 else "http_error",
                    bytes([i, 0, 255]) if i < 4 else None,
                    32 + i if i < 4 else None,
                    f"{i:064x}" if i < 4 else None,
                    3 if i < 4 else None,
                    t0 + dt.timedelta(seconds=i),
                )
                for i, s in enumerate(ids)
            ],
            "sample_id string, status string, image binary, width int, sha256 string, "
            "num_bytes bigint, downloaded_at timestamp",
        ),
        "images",
    )
    tables.upsert(
        spark.createDataFrame(
            [
                (s, ["nsfw"] if i == 1 else [], {"nsfw": "absent", "toxicity": "wordlist"})
                for i, s in enumerate(ids[:4])
            ],
            "sample_id string, flags array<string>, score_models map<string,string>",
        ),
        "scores",
    )
    runs = spark.createDataFrame(
        [(f"r{i}", "download", "ok", i, {"ok": i, "bad": 1}, t0) for i in range(3)],
        "run_id string, stage string, status string, rows_in bigint, "
        "by_status map<string,bigint>, started_at timestamp",
    )
    tables.upsert(runs, "runs")
    return cfg


def test_both_engines_give_the_same_rows(small_tables):
    cfg = small_tables
    for sql in QUERIES:
        fast = query(cfg, sql, engine="datafusion").to_pylist()
        slow = query(cfg, sql, engine="spark").to_pylist()
        assert fast, sql
        assert [{k: _norm(v) for k, v in r.items()} for r in fast] == [
            {k: _norm(v) for k, v in r.items()} for r in slow
        ], sql


def test_auto_falls_back_to_spark_for_spark_only_sql(small_tables, caplog):
    # `size` exists in Spark SQL, not in DataFusion's dialect: auto runs it with Spark
    with caplog.at_level("INFO", logger="laion_spark"):
        out = query(small_tables, "SELECT sum(size(flags)) AS n FROM scores")
    assert out.to_pylist() == [{"n": 1}]
    assert "running it with Spark SQL" in caplog.text


def test_counts_from_the_log_match_the_data(small_tables, spark):
    from laion_spark.tables import Tables

    fast = {r["table"]: (r["rows"], r["version"]) for r in table_counts(small_tables)}
    slow = {r["table"]: (r["rows"], r["version"]) for r in Tables(spark, small_tables).counts()}
    assert fast == slow and fast["candidates"] == (6, slow["candidates"][1])


def test_render_draws_like_spark_show():
    import pyarrow as pa

    t = pa.table({"status": ["success", None], "n": [397, 8]})
    assert render(t, limit=1) == (
        "+-------+---+\n| status|  n|\n+-------+---+\n|success|397|\n+-------+---+\n"
        "only showing top 1 row"
    )


def test_status_counts_what_each_stage_would_take(small_tables):
    from laion_spark.status import pending, render_status

    got = {r["stage"]: r["pending"] for r in pending(small_tables)}
    # 6 candidates all have an images row; 4 downloaded images, none embedded yet
    assert got == {"extract": None, "download": 0, "embed": 4}
    assert "nothing embedded yet" in render_status(small_tables)


def test_status_counts_the_dpo_stages(spark, tmp_path):
    from laion_spark.config import load_config
    from laion_spark.status import pending
    from laion_spark.tables import Tables

    cfg = load_config("local", [f"workdir={tmp_path}"])
    tables = Tables(spark, cfg)
    # 3 usable pool rows (one failed to load) x 3 default templates = 9 units
    tables.upsert(
        spark.createDataFrame(
            [("p0", "ok"), ("p1", "ok"), ("p2", "ok"), ("p3", "failed_to_load")],
            "pool_id string, status string",
        ),
        "sft_pool",
    )
    got = {r["stage"]: r["pending"] for r in pending(cfg) if r["stage"].startswith("dpo")}
    assert got == {"dpo_generate": 9, "dpo_score": 0}
    # p0 answered for two templates (two samples of "short" count once), p1 failed on the
    # batch (retried: not an answer), p3's answer does not count (not a usable pool row)
    rows = [
        ("c0", "p0", "short", "success", None),
        ("c1", "p0", "short", "success", "clip@1"),
        ("c2", "p0", "detailed", "empty_response", None),
        ("c3", "p1", "short", "failed_to_generate", None),
        ("c4", "p3", "short", "success", None),
    ]
    tables.upsert(
        spark.createDataFrame(
            rows,
            "candidate_id string, pool_id string, template string, status string, scorer_id string",
        ),
        "dpo_candidates",
    )
    got = {r["stage"]: r["pending"] for r in pending(cfg) if r["stage"].startswith("dpo")}
    # 9 - 2 answered; one success of a usable row without a score (c0)
    assert got == {"dpo_generate": 7, "dpo_score": 1, "dpo_select": None}


def test_a_run_with_nothing_to_do_answers_without_starting_spark(spark, small_tables, tmp_path):
    """`run download|score` on local tables with nothing pending is answered from the Delta
    tables: proven by running the CLI where no Java exists (a JVM start would fail)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from laion_spark.config import load_config
    from laion_spark.status import nothing_to_do
    from laion_spark.tables import Tables

    # download: every candidate of small_tables has an images row; --retry-failed widens it
    assert nothing_to_do(small_tables, "download", {}) == "every candidate has an images row"
    assert nothing_to_do(small_tables, "download", {"retry_failed": True}) is None
    assert nothing_to_do(small_tables, "score", {}) == "no embeddings yet"

    cfg = load_config("local", [f"workdir={tmp_path / 'wd'}"])
    tables = Tables(spark, cfg)
    ids = [f"{i:032x}" for i in range(3)]
    emb = spark.createDataFrame(
        [(s, "m@1", [1.0, 0.0]) for s in ids],
        "sample_id string, model_id string, image_embedding array<float>",
    )
    tables.upsert(emb, "embeddings")
    scores = spark.createDataFrame(
        [(s, "m@1") for s in ids[:2]], "sample_id string, model_id string"
    )
    tables.upsert(scores, "scores")
    assert nothing_to_do(cfg, "score", {}) is None  # one embedding has no score yet
    assert nothing_to_do(cfg, "embed", {}) is None  # stages without a cheap rule: Spark decides

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, JAVA_HOME=str(tmp_path / "no-java"), PYTHONPATH=str(root))

    def run_score() -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "laion_spark.cli", "run", "score"]
        argv += ["--set", f"workdir={tmp_path / 'wd'}"]
        return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=root, timeout=120)

    # the pending embedding is scored on the local path, the run recorded: no JVM either
    out = run_score()
    assert out.returncode == 0, out.stderr[-2000:]
    assert "in=1 " in out.stdout.replace("  ", " ") and "engine=local" in out.stdout
    assert nothing_to_do(cfg, "score", {}) == "every embedding of m@1 has a score"
    runs = tables.read("runs").where("stage = 'score'").collect()
    assert len(runs) == 1 and runs[0]["status"] == "ok" and runs[0]["rows_in"] == 1

    out = run_score()
    assert out.returncode == 0, out.stderr[-2000:]
    assert "score: nothing to do (every embedding of m@1 has a score" in out.stdout

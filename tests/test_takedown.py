"""Takedowns: samples vanish from every table, requests are idempotent, removed samples stay gone."""

from __future__ import annotations

import hashlib

import pytest
from pyspark.sql import functions as F

from laion_spark.ids import sample_id
from laion_spark.takedown.request import SAMPLE_TABLES, request_id, takedown
from laion_spark.takedown.rules import exclude_taken_down, taken_down_hashes

URLS = [
    "https://keep.example/0.jpg",
    "https://a.example/1.jpg",  # taken down by url
    "http://sub.c.example/2.jpg",  # by domain c.example
    "https://b.example/3.jpg",  # by md5 of its stored bytes
    "https://b.example/4.jpg",  # by sha256
    "https://b.example/5.jpg",  # by sample_id
    "https://notc.example/6.jpg",  # must survive the c.example domain takedown
]


def append(tables, df, name):
    """Seed a table quickly (a plain Delta append; the stages themselves MERGE)."""
    tables.ensure(name)
    df.write.format("delta").mode("append").option("mergeSchema", "true").save(
        tables.location(name)
    )


def seed(spark, tables):
    ids = [sample_id(u, f"caption {i}") for i, u in enumerate(URLS)]
    blobs = [f"image-bytes-{i}".encode() for i in range(len(URLS))]
    append(
        tables,
        spark.createDataFrame(
            [(ids[i], u, f"caption {i}") for i, u in enumerate(URLS)],
            "sample_id string, url string, text string",
        ),
        "candidates",
    )
    append(
        tables,
        spark.createDataFrame(
            [
                (ids[i], u, "success", blobs[i], hashlib.sha256(blobs[i]).hexdigest())
                for i, u in enumerate(URLS)
            ],
            "sample_id string, url string, status string, image binary, sha256 string",
        ),
        "images",
    )
    one = [(s,) for s in ids]
    append(
        tables,
        spark.createDataFrame(
            [(s, "m@1", [1.0, 0.0]) for s in ids],
            "sample_id string, model_id string, image_embedding array<float>",
        ),
        "embeddings",
    )
    append(
        tables,
        spark.createDataFrame(
            [(s, "m@1", 0.1) for s in ids], "sample_id string, model_id string, punsafe float"
        ),
        "scores",
    )
    append(
        tables,
        spark.createDataFrame(
            [("clip_filter", s, 1) for s in ids], "subset string, sample_id string, repeat int"
        ),
        "subsets",
    )
    append(
        tables,
        spark.createDataFrame(
            [("idx", s, i, "shard0") for i, (s,) in enumerate(one)],
            "index_name string, sample_id string, faiss_id long, shard string",
        ),
        "index_ids",
    )
    return ids, blobs


def remaining(tables, name):
    return {r[0] for r in tables.read(name).select("sample_id").collect()}


def test_takedown_removes_from_every_table_and_stays_gone(spark, tables):
    ids, blobs = seed(spark, tables)
    assert set(SAMPLE_TABLES) >= {
        "candidates",
        "images",
        "embeddings",
        "scores",
        "subsets",
        "index_ids",
    }

    # url: matched after normalisation (host case, default port, fragment)
    r = takedown(
        spark, tables.cfg, tables, "url", ["https://A.EXAMPLE:443/1.jpg#x"], reason="DMCA 1"
    )
    assert r == {n: 1 for n in SAMPLE_TABLES}
    assert takedown(spark, tables.cfg, tables, "domain", ["C.example"])["candidates"] == 1
    md5 = hashlib.md5(blobs[3]).hexdigest().upper()  # no md5 column: computed from the bytes
    assert takedown(spark, tables.cfg, tables, "md5", [md5])["images"] == 1
    assert (
        takedown(spark, tables.cfg, tables, "sha256", [hashlib.sha256(blobs[4]).hexdigest()])[
            "scores"
        ]
        == 1
    )
    assert takedown(spark, tables.cfg, tables, "sample_id", [ids[5], " "])["index_ids"] == 1

    survivors = {ids[0], ids[6]}
    for name in SAMPLE_TABLES:
        assert remaining(tables, name) == survivors, name

    # requests recorded once each, with what they removed
    td = tables.read("takedowns").toPandas().set_index("request_id")
    assert len(td) == 5
    url_req = td.loc[request_id("url", "https://a.example/1.jpg")]
    assert url_req["reason"] == "DMCA 1" and url_req["removed"]["candidates"] == 1

    # repeating a request is a no-op that keeps the record (idempotent request id)
    again = takedown(spark, tables.cfg, tables, "url", ["https://a.example/1.jpg"])
    assert set(again.values()) == {0}
    td2 = tables.read("takedowns").toPandas().set_index("request_id")
    assert len(td2) == 5
    row = td2.loc[request_id("url", "https://a.example/1.jpg")]
    assert row["reason"] == "DMCA 1" and row["removed"]["images"] == 1

    # a later extract re-finds every pair: the write path filters the taken-down ones
    reextracted = spark.createDataFrame(
        [(sample_id(u, f"caption {i}"), u, f"caption {i}") for i, u in enumerate(URLS)]
        + [(sample_id(URLS[1], "new caption"), "https://a.example/1.jpg", "new caption")],
        "sample_id string, url string, text string",
    )
    kept = exclude_taken_down(tables, reextracted)
    tables.upsert(kept, "candidates")
    cands = remaining(tables, "candidates")
    assert ids[1] not in cands and ids[2] not in cands and ids[5] not in cands
    assert sample_id(URLS[1], "new caption") not in cands  # same URL, other caption: still gone
    assert {ids[0], ids[3], ids[4], ids[6]} <= cands  # hash takedowns are caught at download
    # ... and download refuses the images by hash
    sha, md5s = taken_down_hashes(tables)
    assert hashlib.sha256(blobs[4]).hexdigest() in sha and md5.lower() in md5s


def test_takedown_rejects_bad_requests(spark, tables):
    with pytest.raises(ValueError, match="kind must be one of"):
        takedown(spark, tables.cfg, tables, "face", ["x"])
    with pytest.raises(ValueError, match="at least one"):
        takedown(spark, tables.cfg, tables, "url", ["", "  "])


def test_takedown_of_unknown_value_records_and_blocks(spark, tables):
    r = takedown(spark, tables.cfg, tables, "domain", ["never-seen.example"])
    assert set(r.values()) == {0}
    df = spark.createDataFrame(
        [("s1", "https://x.never-seen.example/a.png")], "sample_id string, url string"
    )
    assert exclude_taken_down(tables, df).count() == 0
    assert tables.read("takedowns").where(F.col("kind") == "domain").count() == 1

"""Takedowns: samples vanish from every table, requests are idempotent, removed samples stay gone."""

from __future__ import annotations

import hashlib
import io
import json
import os

import pytest
from pyspark.sql import functions as F
from seeding import seed_rows

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


def seed(tables):
    ids = [sample_id(u, f"caption {i}") for i, u in enumerate(URLS)]
    blobs = [f"image-bytes-{i}".encode() for i in range(len(URLS))]
    seed_rows(
        tables,
        "candidates",
        "sample_id url text",
        [(ids[i], u, f"caption {i}") for i, u in enumerate(URLS)],
    )
    seed_rows(
        tables,
        "images",
        "sample_id url status image sha256",
        [
            (ids[i], u, "success", blobs[i], hashlib.sha256(blobs[i]).hexdigest())
            for i, u in enumerate(URLS)
        ],
    )
    seed_rows(
        tables,
        "embeddings",
        "sample_id model_id image_embedding",
        [(s, "m@1", [1.0, 0.0]) for s in ids],
    )
    seed_rows(tables, "scores", "sample_id model_id punsafe", [(s, "m@1", 0.1) for s in ids])
    seed_rows(tables, "subsets", "subset sample_id repeat", [("clip_filter", s, 1) for s in ids])
    seed_rows(
        tables,
        "index_ids",
        "index_name sample_id faiss_id shard",
        [("idx", s, i, "shard0") for i, s in enumerate(ids)],
    )
    # CLIP-DPO: a pool row per image, its responses and pairs (keyed by pool_id only)
    seed_rows(tables, "sft_pool", "pool_id sample_id", [(f"p{i}", s) for i, s in enumerate(ids)])
    seed_rows(
        tables,
        "dpo_candidates",
        "candidate_id pool_id",
        [(f"c{i}", f"p{i}") for i in range(len(ids))],
    )
    seed_rows(
        tables,
        "dpo_pairs",
        "selection pair_id pool_id",
        [("default", f"pair{i}", f"p{i}") for i in range(len(ids))],
    )
    return ids, blobs


def remaining(tables, name):
    return {r[0] for r in tables.read(name).select("sample_id").collect()}


def test_takedown_removes_from_every_table_and_stays_gone(spark, tables):
    ids, blobs = seed(tables)
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
    # responses and pairs generated from taken-down images went with them
    for name in ("dpo_candidates", "dpo_pairs"):
        left = {r[0] for r in tables.read(name).select("pool_id").collect()}
        assert left == {"p0", "p6"}, name

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
    assert {ids[0], ids[6]} <= cands
    # hash takedowns resolved to samples 3 and 4: those samples (and their URLs) stay out too
    assert ids[3] not in cands and ids[4] not in cands
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


# ---------------------------------------------------------------------------- purge


def _scan(root: str, needles: dict[str, bytes]) -> dict[str, list[str]]:
    """needle name -> files under `root` (every file, logs and caches included) holding it."""
    hits: dict[str, list[str]] = {k: [] for k in needles}
    for d, _, files in os.walk(root):
        for f in files:
            path = os.path.join(d, f)
            with open(path, "rb") as fh:
                data = fh.read()
            for name, needle in needles.items():
                if needle in data:
                    hits[name].append(os.path.relpath(path, root))
    return hits


@pytest.mark.slow
def test_takedowns_then_purge_leave_no_byte_behind(spark, tmp_path):
    """url, pdq and domain takedowns, then purge: a byte scan of every file under
    the workdir finds none of the removed samples' image bytes, URLs or embedding bytes
    (and finds them all before the purge); everything else still works."""
    import glob

    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    from laion_spark.cli import main as cli
    from laion_spark.config import load_config
    from laion_spark.demo.synthetic import make_samples
    from laion_spark.index.merge import merge_index
    from laion_spark.index.search import Searcher
    from laion_spark.index.stage import run as build_index
    from laion_spark.tables import Tables
    from laion_spark.takedown.pdq import hash_image
    from laion_spark.takedown.purge import purge

    wd = str(tmp_path / "wd")
    cfg = load_config(
        "local",
        [f"workdir={wd}", f"index.local_cache={wd}/cache", "index.heldout_queries=5"],
    )
    tables = Tables(spark, cfg)
    rng = np.random.default_rng(3)
    samples = [s for s in make_samples(60, seed=9) if hash_image(s.jpeg(128))[1] >= 50][:10]
    n = len(samples)
    jpegs = [s.jpeg(128) for s in samples]
    hosts = [f"h{i}-{rng.integers(1 << 40):x}.example" for i in range(n)]
    urls = [f"https://{hosts[i]}/img/{rng.integers(1 << 60):x}.jpg" for i in range(n)]
    caps = [s.caption for s in samples]
    ids = [sample_id(u, c) for u, c in zip(urls, caps, strict=True)]
    vecs = rng.normal(size=(n, 16)).astype("float32")
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    pdq = [hash_image(j) for j in jpegs]
    seed_rows(
        tables,
        "candidates",
        "sample_id url text language",
        [(ids[i], urls[i], caps[i], "en") for i in range(n)],
    )
    seed_rows(
        tables,
        "images",
        "sample_id url status image sha256 format pdq pdq_quality",
        [
            (
                ids[i],
                urls[i],
                "success",
                jpegs[i],
                hashlib.sha256(jpegs[i]).hexdigest(),
                "jpeg",
                pdq[i][0],
                pdq[i][1],
            )
            for i in range(n)
        ],
    )
    seed_rows(
        tables,
        "embeddings",
        "sample_id model_id image_embedding text_embedding similarity",
        [(ids[i], "m@1", vecs[i].tolist(), vecs[i].tolist(), 0.3) for i in range(n)],
    )
    seed_rows(tables, "scores", "sample_id punsafe", [(ids[i], 0.1) for i in range(n)])
    seed_rows(tables, "subsets", "subset sample_id repeat", [("all", ids[i], 1) for i in range(n)])
    build_index(spark, cfg, tables)
    assert merge_index(spark, cfg, tables).rows_out == n

    # real exports of the subset (the `exports` table records their files): WebDataset
    # tars + parquet, and the LAION layout (img_emb npy row-aligned with metadata parquet)
    from laion_spark.export.stage import run as export

    assert export(spark, cfg, tables, "all", f"{wd}/exports/all-wds", "webdataset").rows_out == n
    assert export(spark, cfg, tables, "all", f"{wd}/exports/all-laion", "laion").rows_out == n

    # take down 1 by url, 2 by a re-encoded + resized copy's PDQ, 4 by domain (sha256 and
    # the other kinds resolve the same way: tested above and in test_serve.py)
    copy = io.BytesIO()
    Image.open(io.BytesIO(jpegs[2])).resize((100, 100)).save(copy, "PNG")
    takedown(spark, cfg, tables, "url", [urls[1]], reason="DMCA 7")
    assert takedown(spark, cfg, tables, "pdq", [hash_image(copy.getvalue())[0]])["images"] == 1
    gone = [1, 2, 4]
    needles = {}
    for i in gone:
        needles[f"image{i}"] = jpegs[i][len(jpegs[i]) // 2 : len(jpegs[i]) // 2 + 48]
        needles[f"url{i}"] = urls[i].encode()
        needles[f"embedding{i}"] = vecs[i].tobytes()
        needles[f"url_prefix{i}"] = urls[i][:32].encode()  # what log statistics keep
    # merge honours the takedowns at once: ids gone although index_ids rows are deleted
    m = merge_index(spark, cfg, tables)
    assert "up_to_date" not in m.by_status and m.rows_out == n - 2
    # before the purge every removed byte is still on disk somewhere (old Delta versions,
    # index shards, the first merged file, the export): the scan can find them
    before = _scan(wd, needles)
    assert all(before.values()), {k: v for k, v in before.items() if not v}
    # per-file min/max statistics in the log hold 32-character prefixes of removed URLs
    assert any("_delta_log" in p for i in gone for p in before[f"url_prefix{i}"])

    # through the CLI: a domain takedown with --purge (erases that request's sample), then
    # `laion-spark purge` (every request not purged yet)
    common = [
        "--set",
        f"workdir={wd}",
        "--set",
        f"index.local_cache={wd}/cache",
        "--set",
        "index.heldout_queries=5",
    ]
    assert cli(["takedown", "--kind", "domain", hosts[4], *common]) == 0
    assert cli(["purge", *common]) == 0
    after = _scan(wd, needles)
    assert not any(after.values()), {k: v for k, v in after.items() if v}

    # what was erased is recorded, the request keeps no URL in clear, rules still block it
    rec = tables.read("purges").collect()
    assert len(rec) == 1 and rec[0]["samples"] == 3 and rec[0]["complete"]
    assert any(e.startswith("rewritten:") for e in rec[0]["index_files"])
    assert any(e.startswith("rewritten:") and ".tar (-3)" in e for e in rec[0]["exports"])
    # the consumer's reader sees the survivors only
    import webdataset as wds

    tars = sorted(glob.glob(f"{wd}/exports/all-wds/*.tar"))
    left = [json.loads(x["json"])["sample_id"] for x in wds.WebDataset(tars, shardshuffle=False)]
    assert sorted(left) == sorted(ids[i] for i in range(n) if i not in gone)
    assert purge(spark, cfg, tables)["requests"] == 0  # nothing left to purge
    td = {r["kind"]: r for r in tables.read("takedowns").collect()}
    assert td["url"]["value"].startswith("sha256:") and td["url"]["reason"] == "DMCA 7"
    assert all(r["purged_at"] is not None for r in td.values())
    again = spark.createDataFrame(
        [(sample_id(urls[1], "new"), urls[1])], "sample_id string, url string"
    )
    assert exclude_taken_down(tables, again).count() == 0
    # survivors intact: Spark and delta-rs read every table, search serves the rest
    keep = [ids[i] for i in range(n) if i not in gone]
    for name in ("candidates", "images", "embeddings", "scores", "subsets", "index_ids"):
        assert remaining(tables, name) == set(keep), name
    from deltalake import DeltaTable

    assert DeltaTable(tables.location("images")).to_pyarrow_table().num_rows == len(keep)
    s = Searcher.open(None, cfg)
    assert s.ntotal == len(keep)
    assert s.search(vecs[0], k=1, safe_mode=False, dedup=False)[0]["sample_id"] == ids[0]
    assert merge_index(spark, cfg, tables).by_status == {"up_to_date": 1}
    laion = f"{wd}/exports/all-laion"
    assert sum(len(np.load(f)) for f in glob.glob(f"{laion}/img_emb/*.npy")) == len(keep)
    meta = [pq.read_table(f) for f in sorted(glob.glob(f"{laion}/metadata/*.parquet"))]
    assert sorted(x for t in meta for x in t.column("sample_id").to_pylist()) == sorted(keep)
    # the cost, as documented: time travel to before the purge is gone
    with pytest.raises(Exception):  # noqa: B017 (Delta raises a JVM error type)
        spark.read.format("delta").option("versionAsOf", 0).load(
            tables.location("candidates")
        ).count()

"""Index stage end to end on real Spark + Delta + faiss: shards, merge, search, takedowns."""

from __future__ import annotations

import numpy as np
import pytest
from index_data import MODEL, add_takedowns, clustered, write_samples
from pyspark.sql import functions as F

from laion_spark.index.factory import choose_factory
from laion_spark.index.faiss_ids import assign_ids, assign_ids_local
from laion_spark.index.merge import merge_index
from laion_spark.index.search import Searcher
from laion_spark.index.stage import run
from laion_spark.tables import Tables

# stated recall@10 floors vs exact search on clustered data, after nprobe tuning (target 0.95)
RECALL_FLOOR_IVF = 0.90  # IVF with full codes (what the budget rule picks when it fits)
RECALL_FLOOR_IVFPQ_4BIT = 0.40  # OPQ16 + 16x4-bit PQ on 32-d tight clusters (measured ~0.5)


def exact_top10(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.argsort(-(q @ x.T), axis=1)[:, :10]


def test_factory_rule():
    assert choose_factory(10_000, 512, 512 * 2**20).factory == "IDMap2,Flat"
    big = choose_factory(1_000_000, 512, 512 * 2**20, train_points=100_000)
    assert (
        big.factory.startswith("OPQ")
        and "_HNSW32" in big.factory
        and big.estimated_bytes <= 512 * 2**20
    )
    small_budget = choose_factory(1_000_000, 512, 128 * 2**20, train_points=100_000)
    assert small_budget.m < big.m  # less memory -> shorter PQ codes
    assert choose_factory(1_000_000, 512, 2**30, train_points=100_000).factory.endswith(",SQ8")
    assert choose_factory(3500, 32, 2**20, 100).factory == "IVF64,Flat"
    with pytest.raises(ValueError, match="memory_budget_mb"):
        choose_factory(1_000_000, 512, 2 * 2**20)


# the two ways the stages run: Spark tasks (a shard each), or here with delta-rs (one shard)
ENGINES = {"spark": ["index.local_max_vectors=0"], "local": []}
SHARDS = {"spark": 3, "local": 1}


@pytest.mark.parametrize("engine", list(ENGINES))
def test_flat_build_merge_search_takedown(spark, make_cfg, tmp_path, engine):
    cfg = make_cfg(["index.partitions=3", "index.heldout_queries=30", *ENGINES[engine]])
    tables = Tables(spark, cfg)
    x = clustered(900, 16, seed=1)
    punsafe = np.where(np.arange(900) % 10 == 0, 0.9, 0.1)
    sids = write_samples(spark, tables, x, punsafe=punsafe)
    # sample 5 taken down by sample_id, sample 7 by its URL
    add_takedowns(spark, tables, [("sample_id", sids[5]), ("url", "http://127.0.0.1:9/img/7.jpg")])

    res = run(spark, cfg, tables)
    assert res.notes["engine"] == engine
    assert res.rows_out == 898 and res.notes["shards"] == SHARDS[engine]
    ids = tables.read("index_ids").where(F.col("index_name") == "main")
    assert ids.count() == 898 and ids.select("faiss_id").distinct().count() == 898
    assert ids.where(F.col("sample_id").isin(sids[5], sids[7])).count() == 0
    man = tables.read("index_manifest").where("kind = 'shard'").collect()
    assert len(man) == SHARDS[engine] and all(r["factory"] == "IDMap2,Flat" for r in man)

    m = merge_index(spark, cfg, tables)
    assert m.notes["engine"] == engine
    assert m.rows_out == 898 and m.notes["recall_at_10"] == pytest.approx(1.0)

    s = Searcher.open(None, cfg)  # no Spark: deltalake reads
    assert s.ntotal == 898
    for i in (1, 2, 3, 11):
        top = s.search(x[i], k=5, safe_mode=False, dedup=False)
        assert top[0]["sample_id"] == sids[i] and top[0]["caption"] == f"generated sample {i}"
        assert top[0]["url"] == f"http://127.0.0.1:9/img/{i}.jpg"
    # taken-down samples never come back, even when queried with their own vector
    for i in (5, 7):
        got = {r["sample_id"] for r in s.search(x[i], k=50, safe_mode=False)}
        assert sids[i] not in got and len(got) == 50
    # safe mode hides punsafe > 0.5 (every 10th sample)
    got = s.search(x[10], k=20, safe_mode=True)
    assert sids[10] not in {r["sample_id"] for r in got}
    assert all(r["punsafe"] <= 0.5 for r in got)
    assert s.search(x[10], k=1, safe_mode=False)[0]["sample_id"] == sids[10]
    # language filter
    assert all(r["language"] == "de" for r in s.search(x[1], k=10, language="de"))

    # a real takedown after the merge deletes the index_ids rows; merge still finds the
    # faiss id in the takedown's resolution: not up to date, ntotal drops, the id is gone
    from laion_spark.takedown.request import takedown

    fid = ids.where(F.col("sample_id") == sids[1]).first()["faiss_id"]
    takedown(spark, cfg, tables, "url", ["http://127.0.0.1:9/img/1.jpg"])
    assert ids.where(F.col("sample_id") == sids[1]).count() == 0
    m2 = merge_index(spark, cfg, tables)
    assert "up_to_date" not in m2.by_status and m2.rows_out == 897
    assert m2.by_status["removed_takedown"] == 1
    s1 = Searcher.open(None, cfg)
    assert s1.ntotal == 897
    _, found = s1.index.search(x[1:2], 897)
    assert fid not in set(found.ravel().tolist())
    assert merge_index(spark, cfg, tables).by_status == {"up_to_date": 1}

    # a takedown after the merge is honoured at query time on reload
    add_takedowns(spark, tables, [("domain", "127.0.0.1")])
    s2 = Searcher.open(spark, cfg, tables)
    assert s2.search(x[1], k=10, safe_mode=False) == []

    # relocatable: manifest paths are relative; a copied workdir serves its own files
    import shutil

    man = tables.read("index_manifest").collect()
    assert all(not r["path"].startswith("/") for r in man), [r["path"] for r in man]
    moved = tmp_path / "moved"
    shutil.copytree(cfg.workdir_path, moved)
    shutil.rmtree(f"{cfg.workdir_path}/indexes")  # the original's files are gone
    cfg2 = make_cfg(["index.partitions=3"], workdir=moved)
    s3 = Searcher.open(None, cfg2)
    assert s3.ntotal == 897 and s3.info()["path"].startswith("indexes/main/merged/")
    # a manifest written before (absolute paths into the old workdir) is still read
    t2 = Tables(spark, cfg2)
    legacy = t2.read("index_manifest").withColumn(
        "path", F.concat(F.lit(cfg.workdir_path + "/"), F.col("path"))
    )
    t2.upsert(legacy, "index_manifest")
    assert t2.read("index_manifest").first()["path"].startswith(cfg.workdir_path)
    assert Searcher.open(None, cfg2).ntotal == 897


def test_dedup_near_identical(spark, make_cfg):
    cfg = make_cfg(["index.heldout_queries=10"])
    tables = Tables(spark, cfg)
    x = clustered(300, 16, seed=2)
    x[1] = x[0] + 1e-4  # near-identical to sample 0
    x[1] /= np.linalg.norm(x[1])
    sids = write_samples(spark, tables, x, partitions=2)
    run(spark, cfg, tables)
    merge_index(spark, cfg, tables)
    s = Searcher.open(None, cfg)
    plain = [r["sample_id"] for r in s.search(x[0], k=5, safe_mode=False, dedup=False)]
    assert set(plain[:2]) == {sids[0], sids[1]}
    deduped = [r["sample_id"] for r in s.search(x[0], k=5, safe_mode=False, dedup=True)]
    assert deduped[0] == sids[0] and sids[1] not in deduped and len(deduped) == 5


def test_opq_pq_shards_merge_ondisk_recall(tmp_path):
    """The PQ path without Spark: shards -> on-disk merge -> remove_ids -> tuned recall."""
    import faiss

    from laion_spark.index import build

    x = clustered(4000, 32, clusters=40, seed=3)
    choice = choose_factory(4000, 32, 100_000, flat_max_vectors=100)
    assert choice.factory == "OPQ16_32,IVF64,PQ16x4np"
    trained = build.serialize(build.train_index(choice.factory, x, "ip"))
    files = []
    for i in range(3):
        shard = build.deserialize(trained)
        part = np.arange(i, 4000, 3)
        shard.add_with_ids(x[part], part.astype("int64"))
        files.append(str(tmp_path / f"s{i}.index"))
        faiss.write_index(shard, files[-1])
    out = str(tmp_path / "merged.index")
    build.merge_shards_ondisk(build.deserialize(trained), files, out, np.array([0, 1]))
    index = build.read_served_index(out)
    assert index.ntotal == 3998 and (tmp_path / "merged.ivfdata").exists()
    q = x[2:102]
    truth = exact_top10(x[2:], q) + 2
    params, recall = build.tune_nprobe(index, q, truth, 0.95, 256, 64)
    assert recall >= RECALL_FLOOR_IVFPQ_4BIT, recall
    _, found = index.search(x[:2], 50)
    assert not ({0, 1} & set(found.ravel().tolist()))  # removed ids never come back


@pytest.mark.parametrize("engine", list(ENGINES))
def test_ivf_recall_and_incremental(spark, make_cfg, engine):
    cfg = make_cfg(
        [
            "index.partitions=3",
            "index.flat_max_vectors=100",
            "index.memory_budget_mb=1",
            "index.heldout_queries=100",
            "index.target_recall=0.95",
            *ENGINES[engine],
        ]
    )
    tables = Tables(spark, cfg)
    x = clustered(4000, 32, clusters=40, seed=3)
    sids = write_samples(spark, tables, x[:3500])
    res = run(spark, cfg, tables)
    assert res.notes["engine"] == engine
    assert res.notes["factory"] == "IVF64,Flat" and res.rows_out == 3500
    m = merge_index(spark, cfg, tables)
    recall = m.notes["recall_at_10"]
    assert recall >= RECALL_FLOOR_IVF, recall
    merged = tables.read("index_manifest").where("kind = 'merged'").collect()
    assert merged[0]["recall_at_10"] == recall and merged[0]["size_bytes"] > 0

    # incremental: only the 500 new embeddings are added, as a new shard set
    sids += write_samples(spark, tables, x[3500:], start=3500, partitions=2)
    again = run(spark, cfg, tables)
    assert again.rows_in == 500 and again.rows_out == 500
    assert run(spark, cfg, tables).rows_out == 0  # nothing left: idempotent
    merge_index(spark, cfg, tables)
    s = Searcher.open(None, cfg)
    assert s.ntotal == 4000
    # our own recall check through the Searcher vs exact numpy search
    q = clustered(50, 32, clusters=40, seed=3, spread=0.4)[:50]
    truth = exact_top10(x, q)
    hits = 0
    for qi in range(len(q)):
        got = {r["sample_id"] for r in s.search(q[qi], k=10, safe_mode=False, dedup=False)}
        hits += len(got & {sids[j] for j in truth[qi]})
    assert hits / (10 * len(q)) >= RECALL_FLOOR_IVF
    # a new sample is found by its own vector
    top = s.search(x[3700], k=1, safe_mode=False, dedup=False)
    assert top[0]["sample_id"] == sids[3700]


def test_id_collisions_resolved(spark):
    rows = [(f"s{i:03d}", [0.0]) for i in range(40)]
    pending = spark.createDataFrame(rows, "sample_id string, vector array<float>")
    existing = spark.createDataFrame([("old", 3)], "sample_id string, faiss_id long")
    ids, n = assign_ids(pending, existing, id_fn=lambda s: int(s[1:]) % 8)  # forced clashes
    got = ids.select("sample_id", "faiss_id").collect()
    assert n > 0 and len({r["faiss_id"] for r in got}) == 40
    assert 3 not in {r["faiss_id"] for r in got}  # existing id kept by its owner
    assert all(r["faiss_id"] >= 0 for r in got)
    # the in-process assignment gives every sample the same id
    here, n_here = assign_ids_local(
        [f"s{i:03d}" for i in range(40)], {3: "old"}, id_fn=lambda s: int(s[1:]) % 8
    )
    assert n_here == n and here == [r["faiss_id"] for r in sorted(got)]


def test_bad_config_fails_fast(make_cfg):
    from laion_spark.settings import ConfigError

    with pytest.raises(ConfigError, match="index.metric"):
        make_cfg(["index.metric=cosine"])
    assert MODEL


def test_mass_id_collisions_resolved_in_few_jobs(spark):
    """Every id clashing (a degenerate id_fn) must still give unique ids, in a few rounds."""
    rows = [(f"s{i:04d}", [0.0]) for i in range(3000)]
    pending = spark.createDataFrame(rows, "sample_id string, vector array<float>")
    existing = spark.createDataFrame([("old", 0)], "sample_id string, faiss_id long")
    tracker = spark.sparkContext.statusTracker()
    before = max(tracker.getJobIdsForGroup() or [0])
    ids, n = assign_ids(pending, existing, id_fn=lambda s: 0)
    jobs = max(tracker.getJobIdsForGroup() or [0]) - before
    got = ids.select("sample_id", "faiss_id").collect()
    assert n == 3000 and len({r["faiss_id"] for r in got}) == 3000
    assert 0 not in {r["faiss_id"] for r in got}
    assert jobs < 20, jobs  # one lookup job per probing round, not one per candidate
    here, n_here = assign_ids_local([f"s{i:04d}" for i in range(3000)], {0: "old"}, lambda s: 0)
    assert n_here == n and here == [r["faiss_id"] for r in sorted(got)]

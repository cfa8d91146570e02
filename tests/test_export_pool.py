"""WebDataset pools in img2dataset / DataComp layout: import into candidates + images, the
import -> export round trip, and resharding a pool by a DataComp uid array.

The pool is written here with webdataset's own TarWriter, as img2dataset writes it: two
shards of 6 samples, each with `{shard}.parquet` (one more sample that failed to download
and is only listed there) and `{shard}_stats.json`.
"""

from __future__ import annotations

import json
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from pyspark.sql import functions as F

from laion_spark.config import load_config
from laion_spark.curate.subsets import write_subset
from laion_spark.demo.synthetic import make_samples
from laion_spark.export.importer import import_webdataset
from laion_spark.export.reshard import reshard
from laion_spark.export.stage import run
from laion_spark.ids import sample_id
from laion_spark.tables import Tables


def _uid(i: int) -> str:
    return f"{(i * 0x9E3779B97F4A7C15) % 2**128:032x}"


def write_pool(folder, shards: int = 2, per_shard: int = 6) -> list[dict]:
    """An img2dataset-layout pool; returns one dict per stored sample."""
    os.makedirs(folder, exist_ok=True)
    gen = make_samples(shards * per_shard, seed=11)
    stored = []
    for s in range(shards):
        name = f"{s:05d}"
        meta_rows = []
        with wds.TarWriter(str(folder / f"{name}.tar")) as tw:
            for j in range(per_shard):
                i = s * per_shard + j
                key = f"{s:05d}{j:04d}"
                body = gen[i].jpeg(size=20 + j)
                meta = {
                    "url": f"http://pool.test/{i}.jpg",
                    "caption": gen[i].caption,
                    "key": key,
                    "status": "success",
                    "error_message": None,
                    "width": 20 + j,
                    "height": 20 + j,
                    "original_width": 200 + j,
                    "original_height": 100 + j,
                    "uid": _uid(i),
                    "similarity": 0.25 + i / 100,
                }
                tw.write(
                    {"__key__": key, "jpg": body, "txt": gen[i].caption, "json": json.dumps(meta)}
                )
                meta_rows.append(meta)
                stored.append({**meta, "image": body, "shard": name})
        failed = {
            "url": f"http://pool.test/dead-{s}.jpg",
            "caption": "an image that could not be downloaded",
            "key": f"{s:05d}{per_shard:04d}",
            "status": "failed_to_download",
            "error_message": "HTTP Error 404: Not Found",
            "width": None,
            "height": None,
            "original_width": None,
            "original_height": None,
            "uid": _uid(1000 + s),
            "similarity": None,
        }
        pq.write_table(pa.Table.from_pylist(meta_rows + [failed]), folder / f"{name}.parquet")
        (folder / f"{name}_stats.json").write_text(
            json.dumps({"count": per_shard + 1, "successes": per_shard, "failed_to_download": 1})
        )
    return stored


@pytest.fixture(scope="module")
def pool(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    stored = write_pool(root / "pool")
    cfg = load_config("local", [f"workdir={root / 'wd'}", "export.shard_samples=3"])
    return dict(root=root, stored=stored, cfg=cfg, tables=Tables(spark, cfg), spark=spark)


def _tar_samples(path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            key, ext = m.name.split(".", 1)
            out.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return out


def test_import_then_export_round_trip(pool):
    spark, cfg, tables, stored = pool["spark"], pool["cfg"], pool["tables"], pool["stored"]
    res = import_webdataset(spark, cfg, tables, str(pool["root"] / "pool"))
    assert res.error is None
    assert res.by_status == {"success": 12, "failed_to_download": 2}
    assert res.rows_out == 14
    images = {r["sample_id"]: r for r in tables.read("images").collect()}
    cands = {r["sample_id"]: r for r in tables.read("candidates").collect()}
    for s in stored:
        sid = sample_id(s["url"], s["caption"])
        img, cand = images[sid], cands[sid]
        assert img["status"] == "success" and img["image"] == s["image"]
        assert (img["width"], img["original_width"]) == (s["width"], s["original_width"])
        assert img["num_bytes"] == len(s["image"]) and img["format"] == "jpg"
        assert cand["text"] == s["caption"] and cand["original_id"] == s["uid"]
        assert cand["original_meta"]["key"] == s["key"]
        assert cand["original_meta"]["shard"] == s["shard"]
        assert float(cand["original_meta"]["similarity"]) == s["similarity"]
    dead = [r for r in images.values() if r["status"] == "failed_to_download"]
    assert len(dead) == 2 and all("404" in r["error_message"] and r["image"] is None for r in dead)
    # a second import reads no shard again and adds nothing
    again = import_webdataset(spark, cfg, tables, str(pool["root"] / "pool"))
    assert again.notes["shards_read"] == 0 and again.rows_out == 0
    assert tables.read("images").count() == 14
    # export every imported sample: same keys, bytes, captions; DataComp uids kept
    ok = tables.read("images").where("status = 'success'").select("sample_id")
    write_subset(tables, "pool_all", ok.withColumn("repeat", F.lit(1)))
    out = pool["root"] / "roundtrip"
    exp = run(spark, cfg, tables, subset="pool_all", to=str(out))
    assert exp.rows_out == 12
    got: dict[str, dict[str, bytes]] = {}
    for t in sorted(f for f in os.listdir(out) if f.endswith(".tar")):
        got.update(_tar_samples(out / t))
    assert sorted(got) == sorted(s["key"] for s in stored)
    for s in stored:
        files = got[s["key"]]
        assert files["jpg"] == s["image"] and files["txt"].decode() == s["caption"]
        meta = json.loads(files["json"])
        assert meta["uid"] == s["uid"] and meta["key"] == s["key"] and meta["url"] == s["url"]


def test_reshard_by_datacomp_uids_keeps_exactly_those(pool):
    spark, cfg, tables, stored = pool["spark"], pool["cfg"], pool["tables"], pool["stored"]
    chosen = [stored[i] for i in (0, 2, 5, 6, 11)]
    # DataComp's subset format: sorted u8,u8; one uid that is not in the pool
    uids = [(int(u[:16], 16), int(u[16:], 16)) for u in [s["uid"] for s in chosen] + [_uid(999)]]
    arr = np.array(uids, np.dtype("u8,u8"))
    arr.sort()
    np.save(pool["root"] / "subset.npy", arr)
    out = pool["root"] / "resharded"
    res = reshard(
        spark, cfg, tables, str(pool["root"] / "subset.npy"), str(pool["root"] / "pool"), str(out)
    )
    assert res.error is None and res.rows_out == 5
    tars = sorted(f for f in os.listdir(out) if f.endswith(".tar"))
    assert tars == ["00000.tar", "00001.tar"]  # 5 samples, 3 per shard
    got: dict[str, dict[str, bytes]] = {}
    for t in tars:
        got.update(_tar_samples(out / t))
        meta = pq.read_table(out / t.replace(".tar", ".parquet")).to_pylist()
        assert [m["key"] for m in meta] == sorted(_tar_samples(out / t))
    assert sorted(got) == sorted(s["key"] for s in chosen)
    with tarfile.open(pool["root"] / "pool" / "00000.tar") as tf:
        originals = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
    for s in chosen:
        assert got[s["key"]]["jpg"] == s["image"]
        assert json.loads(got[s["key"]]["json"])["uid"] == s["uid"]
        if s["shard"] == "00000":  # every member copied byte for byte
            for ext, data in got[s["key"]].items():
                assert originals[f"{s['key']}.{ext}"] == data
    assert json.loads((out / "_SUCCESS").read_text())["samples"] == 5
    again = reshard(
        spark, cfg, tables, str(pool["root"] / "subset.npy"), str(pool["root"] / "pool"), str(out)
    )
    assert again.by_status == {"up_to_date": 5}

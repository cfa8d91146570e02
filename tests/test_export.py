"""Export of a subset to WebDataset / LAION format / parquet / uids, read back with the
consumers' own tools (webdataset, tarfile, numpy, pyarrow), and the shard-set guarantees:
a killed export re-run leaves complete shards only, a second export rewrites nothing.

One module-scoped set of tables (40 samples: images, embeddings, scores, a subset with
repeats, a takedown) serves every test.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from seeding import seed_rows

from laion_spark.config import load_config
from laion_spark.demo.synthetic import make_samples
from laion_spark.export.stage import run
from laion_spark.ids import sample_id
from laion_spark.tables import Tables

MODEL = "test-clip@000000000001"
DIM = 16
N = 40
DC_UID = "0123456789abcdef0123456789ABCDEF"  # one sample imported with a DataComp uid


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    """Tables with 40 samples; subset `sub` holds 30 of them, some repeated, one taken down,
    two without an image and one without embeddings."""
    root = tmp_path_factory.mktemp("export")
    cfg = load_config("local", [f"workdir={root / 'wd'}", "export.shard_samples=8"])
    tables = Tables(spark, cfg)
    rng = np.random.default_rng(0)
    gen = make_samples(N, seed=3)
    rows = []
    for i, s in enumerate(gen):
        url = f"http://img.test/{i}.jpg"
        rows.append(dict(sid=sample_id(url, s.caption), url=url, caption=s.caption, i=i, s=s))
    cand = [
        (
            r["sid"],
            r["url"],
            r["caption"],
            "en" if r["i"] % 3 else "de",
            "cc-by" if r["i"] % 4 == 0 else None,
            DC_UID if r["i"] == 5 else None,
            100 + r["i"],
            90 + r["i"],
        )
        for r in rows
    ]
    # seeded by delta-rs writes (Spark reads them like any table; a Spark write per table
    # cost most of this module's time)
    cols = ["sample_id", "url", "text", "language", "license", "original_id"]
    cols += ["original_width", "original_height"]
    for part in (cand[:20], cand[20:]):  # two files: OPTIMIZE below has work to do
        seed_rows(tables, "candidates", cols, part)
    images, emb, scores = [], [], []
    for r in rows:
        i = r["i"]
        if i in (7, 8):  # failed downloads
            images.append((r["sid"], r["url"], "failed_to_download", "HTTP 404"))
            images[-1] += (None, None, None, None, None, None)
            continue
        body = r["s"].jpeg(size=24 + i % 5)
        side = 24 + i % 5
        images.append(
            (
                r["sid"],
                r["url"],
                "success",
                None,
                body,
                side,
                side,
                hashlib.sha256(body).hexdigest(),
                "jpg",
                len(body),
            )
        )
        r["image"] = body
        if i != 9:  # one image never embedded
            v = rng.normal(size=(2, DIM)).astype("float32")
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            r["img_emb"], r["txt_emb"] = v[0], v[1]
            emb.append(
                (r["sid"], MODEL, v[0].tolist(), v[1].tolist(), float(v[0] @ v[1]), "success")
            )
        scores.append((r["sid"], float(rng.random()), float(rng.random()), float(5 * rng.random())))
    img_cols = "sample_id url status error_message image width height sha256 format num_bytes"
    seed_rows(tables, "images", img_cols, images)
    emb_cols = "sample_id model_id image_embedding text_embedding similarity status"
    seed_rows(tables, "embeddings", emb_cols, emb)
    seed_rows(tables, "scores", "sample_id punsafe pwatermark aesthetic", scores)
    # subset: samples 0..29, sample 3 twice, sample 4 three times; 7, 8 lack an image,
    # 9 lacks embeddings, 11 is taken down (by URL)
    sub = [("sub", r["sid"], 2 if r["i"] == 3 else 3 if r["i"] == 4 else 1) for r in rows[:30]]
    seed_rows(tables, "subsets", "subset sample_id repeat", sub)
    seed_rows(
        tables,
        "takedowns",
        "request_id kind value reason",
        [("req-1", "url", rows[11]["url"], "test")],
    )
    by_sid = {r["sid"]: r for r in rows}
    return dict(cfg=cfg, tables=tables, rows=rows, by_sid=by_sid, root=root, spark=spark)


def _expected(world, kind: str) -> dict[str, int]:
    """sample_id -> copies the subset should export (expanded repeats)."""
    out = {}
    for r in world["rows"][:30]:
        i = r["i"]
        if i == 11 or (kind in ("webdataset", "parquet") and i in (7, 8)):
            continue
        if kind == "laion" and i in (7, 8, 9):
            continue
        out[r["sid"]] = 2 if i == 3 else 3 if i == 4 else 1
    return out


def _f32(v):
    """A float32 as the JSON holds it: its shortest decimal."""
    return None if v is None else float(str(np.float32(v)))


def _tar_samples(path) -> list[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) in tar order, with plain tarfile."""
    out: list[tuple[str, dict[str, bytes]]] = []
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            key, ext = m.name.split(".", 1)
            if not out or out[-1][0] != key:
                out.append((key, {}))
            out[-1][1][ext] = tf.extractfile(m).read()
    return out


@pytest.fixture(scope="module")
def wds_export(world):
    out = world["root"] / "wds"
    res = run(world["spark"], world["cfg"], world["tables"], subset="sub", to=str(out))
    return out, res


def test_webdataset_shards_hold_the_subset_byte_identical(world, wds_export):
    out, res = wds_export
    assert res.error is None
    want = _expected(world, "webdataset")
    assert res.rows_out == sum(want.values()) == 30
    assert res.by_status["taken_down"] == 1 and res.by_status["no_image"] == 2
    tars = sorted(p for p in os.listdir(out) if p.endswith(".tar"))
    assert tars == [f"{i:05d}.tar" for i in range(4)]  # 30 samples, 8 per shard
    # webdataset's own reader: every sample as often as its repeat, bytes untouched
    ds = wds.WebDataset([str(out / t) for t in tars], shardshuffle=False)
    seen: dict[str, int] = {}
    keys = []
    for s in ds:
        meta = json.loads(s["json"])
        r = world["by_sid"][meta["sample_id"]]
        assert s["jpg"] == r["image"]
        assert s["txt"].decode() == r["caption"] == meta["caption"]
        assert meta["url"] == r["url"] and meta["key"] == s["__key__"]
        assert meta["repeat"] == want[meta["sample_id"]]
        assert meta["width"] == 24 + r["i"] % 5 and meta["original_width"] == 100 + r["i"]
        assert meta["uid"] == (DC_UID.lower() if r["i"] == 5 else meta["sample_id"])
        assert meta["status"] == "success" and meta["language"] in ("en", "de")
        seen[meta["sample_id"]] = seen.get(meta["sample_id"], 0) + 1
        keys.append(s["__key__"])
    assert seen == want
    # keys: unique, sorted within and across shards, copies suffixed
    assert len(set(keys)) == len(keys) and keys == sorted(keys)
    sid4 = world["rows"][4]["sid"]
    assert {k for k in keys if k.startswith(sid4)} == {sid4, f"{sid4}_0001", f"{sid4}_0002"}
    # plain tarfile agrees, and the parquet + stats beside each tar match the tar
    for t in tars:
        stem = t[:-4]
        members = _tar_samples(out / t)
        meta = pq.read_table(out / f"{stem}.parquet").to_pylist()
        assert [m["key"] for m in meta] == [k for k, _ in members]
        for (_key, files), m in zip(members, meta, strict=True):
            assert set(files) == {"jpg", "txt", "json"}
            assert json.loads(files["json"])["sample_id"] == m["sample_id"]
            assert json.loads(files["json"])["similarity"] == _f32(m["similarity"])
        stats = json.loads((out / f"{stem}_stats.json").read_text())
        assert stats["count"] == stats["successes"] == len(members) == (6 if stem == "00003" else 8)
    # scores and similarity match the tables
    sc = world["tables"].read("scores").toPandas().set_index("sample_id")
    emb = world["tables"].read("embeddings").toPandas().set_index("sample_id")
    meta = pq.read_table(out / "00001.parquet").to_pandas()
    for m in meta.itertuples():
        assert np.float32(m.punsafe) == np.float32(sc.punsafe[m.sample_id])
        assert np.float32(m.aesthetic) == np.float32(sc.aesthetic[m.sample_id])
        if m.sample_id in emb.index:
            assert np.float32(m.similarity) == np.float32(emb.similarity[m.sample_id])


def test_manifest_exports_table_and_noop_rerun(world, wds_export):
    out, res = wds_export
    manifest = json.loads((out / "_SUCCESS").read_text())
    assert manifest["samples"] == 30 and manifest["shard_count"] == 4
    versions = manifest["delta_versions"]
    assert versions["images"] == world["tables"].version("images")
    assert manifest["config"]["export"]["shard_samples"] == 8
    row = world["tables"].read("exports").where(f"target = '{out}'").first()
    assert row["sample_count"] == 30 and row["format"] == "webdataset"
    assert row["manifest_path"] == f"{out}/_SUCCESS"
    assert sorted(row["shard_paths"]) == sorted(
        f"{out}/{f}" for s in manifest["shards"] for f in s["files"]
    )
    before = {
        p: os.stat(out / p).st_mtime_ns for p in os.listdir(out) if not os.path.isdir(out / p)
    }
    again = run(world["spark"], world["cfg"], world["tables"], subset="sub", to=str(out))
    assert again.by_status == {"up_to_date": 30} and again.notes["written"] == 0
    after = {p: os.stat(out / p).st_mtime_ns for p in os.listdir(out) if not os.path.isdir(out / p)}
    assert after == before  # not one file rewritten

    # a commit that changes no row (OPTIMIZE compacts files: dataChange=false) moves the
    # Delta version; the export reads the last version that changed rows: still a no-op
    tables = world["tables"]
    cand_before = tables.version("candidates")
    tables.delta("candidates").optimize().executeCompaction()
    assert tables.version("candidates") == cand_before + 1
    assert tables.data_version("candidates") == versions["candidates"]
    third = run(world["spark"], world["cfg"], tables, subset="sub", to=str(out))
    assert third.by_status == {"up_to_date": 30}


def _cfg(world, *overrides: str):
    return load_config("local", [f"workdir={world['cfg'].workdir}", *overrides])


@pytest.mark.parametrize("path", ["spark", "here"])
def test_killed_export_rerun_leaves_complete_shards_each_sample_once(world, monkeypatch, path):
    """The writer of the last shard dies mid-way: a Spark task (as a killed executor), or
    the whole process when the export runs in it (a small export of local tables, through
    the CLI). The earlier shards are complete, the rest are temporary files only; the
    re-run keeps the complete shards, writes the others, and every sample is there
    exactly as often as it should."""
    import subprocess
    import sys

    from laion_spark.export.shards import CRASH_ENV

    out = world["root"] / f"killed_{path}"
    if path == "spark":  # every export through Spark's write tasks
        cfg = _cfg(world, "export.shard_samples=8", "export.local_write_bytes=0")
        monkeypatch.setenv(CRASH_ENV, "3")  # the driver passes it on to the write tasks
        with pytest.raises(Exception, match="(?i)python worker"):  # the dead worker
            run(world["spark"], cfg, world["tables"], subset="sub", to=str(out))
        monkeypatch.delenv(CRASH_ENV)
    else:
        cfg = world["cfg"]
        argv = [sys.executable, "-m", "laion_spark.cli", "export", "--subset", "sub"]
        argv += ["--to", str(out), "--shard-samples", "8", "--set", f"workdir={cfg.workdir}"]
        # one thread: shards 0-2 are complete when shard 3's writer dies
        argv += ["--set", "export.local_threads=1"]
        # no Java here: a JVM start would fail, so this path proves it needs none
        env = {**os.environ, CRASH_ENV: "3", "JAVA_HOME": str(world["root"] / "no-java")}
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 17, proc.stderr[-2000:]
    files = os.listdir(out)
    assert "_SUCCESS" not in files
    assert any(f.startswith(".") and ".tmp-" in f for f in files)  # the dead writer's files
    complete = sorted(f for f in files if f.endswith(".tar"))
    assert complete and "00003.tar" not in complete
    for t in complete:  # every final-named tar is a whole shard
        assert len(_tar_samples(out / t)) == 8
    kept = {t: os.stat(out / t).st_mtime_ns for t in complete}
    res = run(world["spark"], cfg, world["tables"], subset="sub", to=str(out))
    assert res.notes["kept"] == len(complete) and res.notes["written"] == 4 - len(complete)
    assert {t: os.stat(out / t).st_mtime_ns for t in complete} == kept
    files = os.listdir(out)
    assert not [f for f in files if ".tmp-" in f]
    seen: dict[str, int] = {}
    for t in sorted(f for f in files if f.endswith(".tar")):
        for _key, parts in _tar_samples(out / t):
            sid = json.loads(parts["json"])["sample_id"]
            seen[sid] = seen.get(sid, 0) + 1
    assert seen == _expected(world, "webdataset")
    if path == "here":  # the CLI, JVM-free, ends cleanly (exit 0) when all is written
        env.pop(CRASH_ENV)
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "30 samples in 4 shard(s)" in proc.stdout


def test_laion_format_rows_align_with_embeddings(world):
    out = world["root"] / "laion"
    res = run(world["spark"], world["cfg"], world["tables"], subset="sub", to=str(out), fmt="laion")
    want = _expected(world, "laion")
    assert res.rows_out == sum(want.values()) and res.by_status["no_embedding"] == 3
    n_files = len(os.listdir(out / "img_emb"))
    assert n_files == len(os.listdir(out / "text_emb")) == len(os.listdir(out / "metadata")) == 4
    seen: dict[str, int] = {}
    for name in sorted(os.listdir(out / "img_emb")):
        i = name[len("img_emb_") : -len(".npy")]
        img = np.load(out / "img_emb" / name)
        txt = np.load(out / "text_emb" / f"text_emb_{i}.npy")
        meta = pq.read_table(out / "metadata" / f"metadata_{i}.parquet").to_pylist()
        assert img.dtype == txt.dtype == np.float16
        assert img.shape == txt.shape == (len(meta), DIM)
        np.testing.assert_allclose(np.linalg.norm(img.astype("float32"), axis=1), 1, atol=2e-3)
        for row, a, b in zip(meta, img, txt, strict=True):
            r = world["by_sid"][row["sample_id"]]
            np.testing.assert_allclose(a.astype("float32"), r["img_emb"], atol=1e-3)
            np.testing.assert_allclose(b.astype("float32"), r["txt_emb"], atol=1e-3)
            assert row["url"] == r["url"] and row["caption"] == r["caption"]
            seen[row["sample_id"]] = seen.get(row["sample_id"], 0) + 1
    assert seen == want


def test_parquet_and_uids_formats_through_the_cli(world, capsys):
    from laion_spark.cli import main

    common = ["--set", f"workdir={world['cfg'].workdir}", "--shard-samples", "8"]
    out = world["root"] / "pq"
    assert (
        main(["export", "--subset", "sub", "--format", "parquet", "--to", str(out), *common]) == 0
    )
    assert "30 samples in 4 shard(s)" in capsys.readouterr().out
    rows = []
    for f in sorted(os.listdir(out)):
        if f.endswith(".parquet"):
            rows += pq.read_table(out / f).to_pylist()
    assert len(rows) == 30
    for r in rows:
        assert r["image"] == world["by_sid"][r["sample_id"]]["image"]
    out = world["root"] / "uids"
    assert main(["export", "--subset", "sub", "--format", "uids", "--to", str(out), *common]) == 0
    arr = np.load(out / "uids.npy")
    assert arr.dtype == np.dtype("u8,u8") and (np.sort(arr) == arr).all()
    want = _expected(world, "uids")
    assert len(arr) == sum(want.values()) == 32
    uid5 = DC_UID.lower()
    assert (int(uid5[:16], 16), int(uid5[16:], 16)) in arr.tolist()
    # the earlier single-file form still works and agrees
    single = world["root"] / "single.npy"
    argv = ["export", "sub", "--out", str(single), "--format", "uids", "--expand-repeats"]
    assert main([*argv, "--set", f"workdir={world['cfg'].workdir}"]) == 0
    np.testing.assert_array_equal(np.load(single), arr)


def test_tar_stream_writes_what_tarfile_writes(tmp_path):
    """The template-built headers give tarfile's own bytes (so a re-export of old shards
    stays byte-identical), long or non-ASCII names included (those take tarfile's path)."""
    import io

    from laion_spark.export.writers import TarStream

    rng = np.random.default_rng(1)
    names = ["a.jpg", "k" * 95 + ".json", "k" * 96 + ".json", "k" * 120 + ".txt", "ümlaut.txt"]
    names += [f"{i:032x}_{i:04d}.webp" for i in range(20)]
    ours, theirs = io.BytesIO(), io.BytesIO()
    stream = TarStream(ours)
    with tarfile.open(fileobj=theirs, mode="w|") as tf:
        for name in names:
            data = rng.bytes(int(rng.choice([0, 1, 511, 512, 513, 3000])))
            stream.add(name, data)
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o444
            tf.addfile(info, io.BytesIO(data))
    stream.close()
    assert ours.getvalue() == theirs.getvalue()
    with tarfile.open(fileobj=io.BytesIO(ours.getvalue())) as tf:
        assert tf.getnames() == names


def test_every_write_path_writes_the_same_shards(world):
    """A small subset of local tables is read with delta-rs and written in this process; with
    that off, planned on the driver from one Spark collect; a big one by Spark (sort,
    checkpoint, count). All three give the same shards, byte for byte, with a seeded
    shuffle (Spark's xxhash64 order) and shards cut by bytes, and the same skip counts
    (takedown included)."""
    paths = {
        "here": [],
        "driver": ["export.local_write_bytes=0"],
        "spark": ["export.local_plan_rows=0"],
    }
    outs, results = [], []
    for name, extra in paths.items():
        cfg = _cfg(world, "export.shard_bytes=20000", "export.shuffle_seed=7", *extra)
        out = world["root"] / f"plan_{name}"
        results.append(run(world["spark"], cfg, world["tables"], subset="sub", to=str(out)))
        outs.append(out)
    here = results[0]
    assert [r.notes["path"] for r in results] == list(paths)
    assert here.by_status["taken_down"] == 1
    tars = sorted(f for f in os.listdir(outs[0]) if f.endswith(".tar"))
    for res, out in zip(results[1:], outs[1:], strict=True):
        assert res.by_status == here.by_status
        assert res.notes["shards"] == here.notes["shards"] > 2
        assert tars == sorted(f for f in os.listdir(out) if f.endswith(".tar"))
        for t in tars:
            assert (outs[0] / t).read_bytes() == (out / t).read_bytes(), (out, t)
            stem = t[:-4]
            assert (outs[0] / f"{stem}.parquet").read_bytes() == (
                out / f"{stem}.parquet"
            ).read_bytes()
    keys = [k for t in tars for k, _ in _tar_samples(outs[0] / t)]
    assert keys != sorted(keys)  # shuffled across shards

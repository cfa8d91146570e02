"""Export throughput: a subset of N images to WebDataset through Spark, against a plain
single-process tarfile loop over the same rows read from one parquet file.

    .venv/bin/python benchmarks/bench_export.py --n 20000 --cores 2

Setup (not timed): N distinct JPEGs (gradient + noise, --size px square, ~5 KB at 128 px) go into
`candidates`, `images` and a subset `bench` in a temporary Delta workdir, and the same
rows (key, sample_id, url, caption, image, width, height, sha256) into one parquet file.

Timed:
  * ours: `laion_spark.export.stage.run(..., fmt="webdataset")` on a local[<cores>] Spark
    session: reads the Delta tables, plans exact shards, writes one shard per task
    (`{shard}.tar` with `{key}.jpg/.txt/.json`, `{shard}.parquet`, `{shard}_stats.json`, each
    under a temporary name then renamed), the `_SUCCESS` manifest and the `exports` row;
  * the loop: pyarrow reads the parquet file in batches and one Python process writes the
    same members (jpg, txt, json) into tar shards of the same size, plus each shard's
    metadata parquet: the floor of the work without Spark, Delta or the guarantees.
Then ours again with the same inputs (`rerun_s`): the manifest matches, nothing is rewritten.

Both run on the same machine (pin both with `taskset -c 0-<cores-1>` for a strict
same-cores comparison). `efficiency=` ours ÷ the loop in samples/s. The outputs are
checked: same sample count, our bytes equal the images table's.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import os
import sys
import tarfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _common import print_result, scratch


def make_jpegs(n: int, size: int, seed: int = 0) -> list[bytes]:
    """n distinct JPEGs: smooth colour gradients plus noise (realistic-ish sizes)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = []
    for _ in range(n):
        a, b, c = rng.random(3) * 255
        base = np.stack([a * xx, b * yy, c * (1 - xx)], axis=-1)
        noise = rng.normal(0, 12, size=(size, size, 3))
        img = np.clip(base + noise, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def build_inputs(spark, tables, n: int, size: int, parquet_path: str) -> int:
    from pyspark.sql import functions as F

    from laion_spark.ids import sample_id
    from laion_spark.tables import spark_schema

    bodies = make_jpegs(n, size)
    rows = []
    for i, body in enumerate(bodies):
        url = f"http://img.bench/{i}.jpg"
        caption = f"a picture number {i} of a gradient with noise"
        sid = sample_id(url, caption)
        rows.append((sid, url, caption, body, size, size, hashlib.sha256(body).hexdigest()))
    cand = spark.createDataFrame(
        [(r[0], r[1], r[2]) for r in rows], spark_schema("candidates", ["sample_id", "url", "text"])
    )
    tables.append(cand, "candidates")
    img = spark.createDataFrame(
        [(r[0], r[1], "success", r[3], r[4], r[5], r[6]) for r in rows],
        "sample_id string, url string, status string, image binary, width int, height int, "
        "sha256 string",
    )
    img = img.withColumn("format", F.lit("jpg")).withColumn(
        "num_bytes", F.length("image").cast("long")
    )
    tables.append(img, "images")
    sub = spark.createDataFrame(
        [("bench", r[0], 1) for r in rows],
        spark_schema("subsets", ["subset", "sample_id", "repeat"]),
    )
    tables.append(sub, "subsets")
    # the loop's input: the same rows in key order (our keys are the sample_ids)
    rows.sort(key=lambda r: r[0])
    table = pa.table(
        {
            "key": [r[0] for r in rows],
            "sample_id": [r[0] for r in rows],
            "url": [r[1] for r in rows],
            "caption": [r[2] for r in rows],
            "image": pa.array([r[3] for r in rows], pa.binary()),
            "width": pa.array([r[4] for r in rows], pa.int32()),
            "height": pa.array([r[5] for r in rows], pa.int32()),
            "sha256": [r[6] for r in rows],
        }
    )
    pq.write_table(table, parquet_path, row_group_size=1000)
    return sum(len(r[3]) for r in rows)


def tar_loop(parquet_path: str, out: str, shard_samples: int) -> dict:
    """The plain single-process loop: parquet batches -> tar shards (+ metadata parquet)."""
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    shard, in_shard, count = 0, 0, 0
    tar, meta = None, []

    def close() -> None:
        tar.close()
        pq.write_table(pa.Table.from_pylist(meta), f"{out}/{shard:05d}.parquet")

    for batch in pq.ParquetFile(parquet_path).iter_batches(batch_size=1000):
        for r in batch.to_pylist():
            if tar is None:
                tar = tarfile.open(f"{out}/{shard:05d}.tar", "w")
            image = r.pop("image")
            doc = {**r, "status": "success"}
            for ext, data in (
                ("jpg", image),
                ("txt", r["caption"].encode()),
                ("json", json.dumps(doc).encode()),
            ):
                info = tarfile.TarInfo(f"{r['key']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            meta.append(doc)
            in_shard += 1
            count += 1
            if in_shard == shard_samples:
                close()
                shard, in_shard, tar, meta = shard + 1, 0, None, []
    if tar is not None:
        close()
    return {"wall_s": time.time() - t0, "samples": count}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--size", type=int, default=128, help="image side in pixels")
    ap.add_argument("--shard-samples", type=int, default=2000)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    a = ap.parse_args()

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from laion_spark.config import load_config
    from laion_spark.export.stage import run
    from laion_spark.session import get_spark
    from laion_spark.tables import Tables

    with scratch("bench_export_", a.keep) as work:
        cfg = load_config(
            "local",
            [
                f"workdir={work}/wd",
                f"spark.master=local[{a.cores}]",
                f"export.shard_samples={a.shard_samples}",
            ],
        )
        spark = get_spark(cfg)
        tables = Tables(spark, cfg)
        t0 = time.time()
        nbytes = build_inputs(spark, tables, a.n, a.size, f"{work}/rows.parquet")
        print(
            f"setup: {a.n} images, {nbytes / 1e6:.1f} MB of JPEG, in {time.time() - t0:.1f}s "
            "(not timed)"
        )

        t0 = time.time()
        res = run(spark, cfg, tables, subset="bench", to=f"{work}/ours", fmt="webdataset")
        ours_s = time.time() - t0
        assert res.error is None and res.rows_out == a.n, res
        print(
            f"ours: {res.rows_out} samples in {res.notes['shards']} shards, {ours_s:.2f}s "
            f"({a.n / ours_s:.0f} samples/s, {nbytes / ours_s / 1e6:.1f} MB/s)"
        )
        phases = dict(res.notes.get("phases") or {})
        phases["other"] = ours_s - sum(phases.values())  # versions, model id, target state
        print("ours, phases: " + " ".join(f"{k}={v:.2f}s" for k, v in phases.items()))

        t0 = time.time()
        again = run(spark, cfg, tables, subset="bench", to=f"{work}/ours", fmt="webdataset")
        rerun_s = time.time() - t0
        assert again.by_status.get("up_to_date") == a.n and not again.notes["written"], again
        print(f"ours, re-run with the same inputs: nothing rewritten, {rerun_s:.2f}s")

        loop = tar_loop(f"{work}/rows.parquet", f"{work}/loop", a.shard_samples)
        assert loop["samples"] == a.n, loop
        print(
            f"tarfile loop: {loop['samples']} samples, {loop['wall_s']:.2f}s "
            f"({a.n / loop['wall_s']:.0f} samples/s, {nbytes / loop['wall_s'] / 1e6:.1f} MB/s)"
        )

        # the outputs agree: every sample once, our image bytes equal the loop's input
        want = {
            r["key"]: r["image"]
            for r in pq.read_table(f"{work}/rows.parquet", columns=["key", "image"]).to_pylist()
        }
        seen = 0
        for path in sorted(glob.glob(f"{work}/ours/*.tar")):
            with tarfile.open(path) as tf:
                for m in tf:
                    if m.name.endswith(".jpg"):
                        assert tf.extractfile(m).read() == want[m.name[:-4]], m.name
                        seen += 1
        assert seen == a.n, seen

        ours_sps, loop_sps = a.n / ours_s, a.n / loop["wall_s"]
        print_result(
            {
                "n": a.n,
                "cores": a.cores,
                "shards": res.notes["shards"],
                "ours_samples_per_s": f"{ours_sps:.0f}",
                "loop_samples_per_s": f"{loop_sps:.0f}",
                "ours_s": f"{ours_s:.2f}",
                "loop_s": f"{loop['wall_s']:.2f}",
                "rerun_s": f"{rerun_s:.2f}",
                "efficiency": f"{ours_sps / loop_sps:.3f}",
            }
        )


if __name__ == "__main__":
    main()

"""Export `dpo_pairs` as a dataset in TRL's vision DPO format (parquet shards).

    n = export_dpo(spark, cfg, tables, "out/dpo")            # selection dpo.select.name
    ds = datasets.load_dataset("parquet", data_dir="out/dpo", split="train")
    trl.DPOTrainer(model, args, train_dataset=ds, processing_class=processor)

One row per pair, conversational, as TRL's own vision preference datasets are laid out:

    images   [Image]                 the pair's image (original encoded bytes)
    prompt   [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ...}]}]
    chosen   [{"role": "assistant", "content": [{"type": "text", "text": ...}]}]
    rejected [{"role": "assistant", "content": [{"type": "text", "text": ...}]}]
    pair_id, margin                  to trace a row back to `dpo_pairs`

The parquet schema carries the Hugging Face features (`huggingface` schema metadata), so
`load_dataset("parquet", ...)` decodes `images` as PIL images. One shard per Spark partition
(`part-00000.parquet`, ...) written by the task itself, to any fsspec path.
"""

from __future__ import annotations

import io
import logging
from typing import Any

log = logging.getLogger(__name__)

SHARD_GLOB = "part-*.parquet"


def features() -> Any:
    """The `datasets.Features` of an exported row."""
    from datasets import Features, Image, List, Value

    def turns():
        content = List({"type": Value("string"), "text": Value("string")})
        return List({"role": Value("string"), "content": content})

    return Features(
        {
            "images": List(Image()),
            "prompt": turns(),
            "chosen": turns(),
            "rejected": turns(),
            "pair_id": Value("string"),
            "margin": Value("float32"),
        }
    )


def trl_record(image: bytes, prompt: str, chosen: str, rejected: str) -> dict[str, Any]:
    """One row in TRL's conversational vision preference layout."""
    return {
        "images": [{"bytes": image, "path": None}],
        "prompt": [
            {
                "role": "user",
                "content": [{"type": "image", "text": None}, {"type": "text", "text": prompt}],
            }
        ],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": chosen}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": rejected}]}],
    }


def _write_shards(out: str, schema: Any):
    """mapInArrow function: each task writes its rows as one parquet shard."""

    def fn(batches):
        import pyarrow as pa
        import pyarrow.parquet as pq
        from pyspark import TaskContext

        from laion_spark import storage

        tc = TaskContext.get()
        part = tc.partitionId() if tc is not None else 0
        rows: list[dict] = []
        for rb in batches:
            for r in rb.to_pylist():
                rec = trl_record(r["image"], r["prompt"], r["chosen"], r["rejected"])
                rec.update(pair_id=r["pair_id"], margin=r["margin"])
                rows.append(rec)
        if rows:
            buf = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
            storage.write_bytes(storage.join(out, f"part-{part:05d}.parquet"), buf.getvalue())
        yield pa.RecordBatch.from_pydict(
            {"rows": [len(rows)]}, schema=pa.schema([("rows", pa.int64())])
        )

    return fn


def export_dpo(
    spark,
    cfg,
    tables,
    out: str,
    *,
    selection: str | None = None,
    shards: int | None = None,
    overwrite: bool = True,
) -> int:
    """Write the pairs of `selection` (default dpo.select.name) under `out`; rows written.

    Pairs whose pool row is gone (taken down) are not exported. `shards` = number of parquet
    files (default: Spark's default parallelism, at most one per 1000 pairs). With
    `overwrite`, shards of an earlier export in `out` are removed first.
    """
    from pyspark.sql import functions as F

    from laion_spark import storage
    from laion_spark.extras import require

    require("dpo", "datasets")
    selection = selection or cfg.dpo.select.name
    pairs = tables.read("dpo_pairs").where(F.col("selection") == selection)
    pool = tables.read("sft_pool").where(F.col("status") == "ok").select("pool_id", "image")
    df = pairs.join(pool, "pool_id").select(
        "pair_id", "image", "prompt", "chosen", "rejected", "margin"
    )
    n = df.count()
    fs, root = storage.fs_path(out)
    if overwrite and fs.exists(root):
        for old in fs.glob(f"{root.rstrip('/')}/{SHARD_GLOB}"):
            fs.rm(old)
    if n == 0:
        log.warning("selection %r has no pairs to export", selection)
        return 0
    k = shards or max(1, min(spark.sparkContext.defaultParallelism, -(-n // 1000)))
    schema = features().arrow_schema
    written = (
        df.repartition(k, "pair_id")
        .mapInArrow(_write_shards(out, schema), "rows long")
        .agg(F.sum("rows"))
        .first()[0]
    )
    return int(written or 0)

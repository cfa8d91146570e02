"""Export a subset as training-ready shards: WebDataset, LAION release format, parquet, uids.

    from laion_spark.export.stage import run
    result = run(spark, cfg, tables, subset="clip_filter", fmt="webdataset", to="s3://b/out")

Reads the subset's samples at the tables' current Delta versions (recorded in the
manifest), plans them into shards (`export.shard_samples` or `export.shard_bytes`), and
writes one shard per Spark task straight to the target through fsspec. The target gets
a `_SUCCESS` manifest (counts, Delta versions, options, the config); the export is
recorded in the `exports` table so a takedown can find its shards. See docs/export.md.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import datetime

from pyspark.sql import functions as F

from laion_spark import storage
from laion_spark.config import Config
from laion_spark.export import samples, shards
from laion_spark.export.formats import writer_class
from laion_spark.stage import StageResult
from laion_spark.tables import SPECS, Tables

log = logging.getLogger(__name__)


def run(
    spark,
    cfg: Config,
    tables: Tables,
    subset: str,
    to: str,
    fmt: str | None = None,
    force: bool = False,
    crash_in_shard: int | None = None,
) -> StageResult:
    """Export subset `subset` to `to` in format `fmt` (default export.format).

    force: rewrite every shard even when the target already holds these inputs.
    crash_in_shard: tests only: the task writing that shard dies mid-way (a killed export).
    """
    t0 = time.time()
    ex = cfg.export
    fmt = fmt or ex.format
    writer = writer_class(fmt)
    target = shards.normalize_target(to)
    versions = table_versions(tables, samples.TABLES_READ)
    if versions["subsets"] is None:
        return StageResult("export", error="no subsets table yet: run curate first")
    from laion_spark.models.clip import embedding_model_id

    model_id = embedding_model_id(cfg, tables, ex.model_id, "export.model_id")
    options = {
        "subset": subset,
        "format": fmt,
        "shard_samples": ex.shard_samples,
        "shard_bytes": ex.shard_bytes,
        "repeats": ex.repeats,
        "shuffle_seed": ex.shuffle_seed,
        "model_id": model_id,
    }
    digest = shards.digest_of(
        {"options": options, "versions": versions, "layout": shards.LAYOUT_VERSION}
    )
    skipped: dict[str, int] = {}

    def make_plan() -> shards.Plan:
        narrow = samples.narrow_frame(tables, subset, versions, writer.needs, model_id)
        rows = samples.keyed_rows(narrow, ex.repeats)
        if ex.shuffle_seed is not None:
            order = [F.xxhash64(F.lit(int(ex.shuffle_seed)), F.col("key")), F.col("key")]
        else:
            order = [F.col("key")]
        plan = shards.plan_shards(
            rows,
            order,
            ex.shard_samples,
            ex.shard_bytes,
            single_shard=writer.single_shard,
            skip_col="_skip",
        )
        skipped.update(plan.skipped)
        skipped["exported"] = plan.samples
        return plan

    describe = {
        "kind": "export",
        "subset": subset,
        "format": fmt,
        "options": options,
        "delta_versions": versions,
        "skipped": skipped,
        "config": dataclasses.asdict(cfg),
    }
    res = shards.write_shard_set(
        target=target,
        writer=writer,
        digest=digest,
        describe=describe,
        make_plan=make_plan,
        payload=samples.payload_frame(tables, versions, writer.needs, model_id),
        broadcast_rows=ex.broadcast_plan_rows,
        force=force,
        crash_in_shard=crash_in_shard,
    )
    manifest = res.manifest
    if not res.up_to_date:
        record_export(tables, manifest)
    n = int(manifest.get("samples", 0))
    by_status = {"up_to_date": n} if res.up_to_date else {"exported": n}
    by_status.update({k: v for k, v in skipped.items() if k != "exported"})
    log.info("export %s -> %s: %s", subset, target, by_status)
    return StageResult(
        "export",
        rows_in=sum(skipped.values()) if skipped else n,
        rows_out=n,
        by_status=by_status,
        seconds=time.time() - t0,
        notes={
            "format": fmt,
            "target": target,
            "shards": manifest.get("shard_count", 0),
            "written": res.written,
            "kept": res.kept,
        },
    )


def table_versions(tables: Tables, names) -> dict[str, int | None]:
    """Tables.version of each table, asked concurrently (each is a small Spark job)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(names)) as pool:
        return dict(zip(names, pool.map(tables.version, names), strict=True))


def record_export(tables: Tables, manifest: dict) -> None:
    """One row per target in `exports`: what is there now, and where its manifest is."""
    target = manifest["target"]
    files = [storage.join(target, f) for s in manifest["shards"] for f in s["files"]]
    row = {
        "export_id": manifest["export_id"],
        "subset": manifest.get("subset"),
        "format": manifest.get("format"),
        "target": target,
        "shard_paths": files,
        "sample_count": int(manifest.get("samples", 0)),
        "created_at": datetime.fromisoformat(manifest["created_at"]),
        "manifest_path": storage.join(target, shards.MANIFEST),
        "inputs_digest": manifest["inputs_digest"],
        "delta_versions": {
            k: int(v) for k, v in (manifest.get("delta_versions") or {}).items() if v is not None
        },
    }
    df = tables.spark.createDataFrame([row], SPECS["exports"].schema)
    known = tables.exists("exports") and (
        tables.read("exports").where(F.col("export_id") == F.lit(row["export_id"])).limit(1).count()
    )
    if known:
        tables.upsert(df, "exports", dedup=False)
    else:  # a new target: a plain append, not a MERGE
        tables.append(df, "exports")

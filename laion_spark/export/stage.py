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
import os
import time

from pyspark.sql import functions as F

from laion_spark.config import Config
from laion_spark.export import local, samples, shards
from laion_spark.export.formats import writer_class
from laion_spark.stage import StageResult
from laion_spark.tables import Tables
from laion_spark.takedown.rules import TakedownRules, load_rules

log = logging.getLogger(__name__)


def run(
    spark,
    cfg: Config,
    tables: Tables,
    subset: str,
    to: str,
    fmt: str | None = None,
    force: bool = False,
) -> StageResult:
    """Export subset `subset` to `to` in format `fmt` (default export.format).

    force: rewrite every shard even when the target already holds these inputs.
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
    path = {"name": "spark"}  # which way the plan was made and written (notes["path"])
    how = {
        "shard_samples": ex.shard_samples,
        "shard_bytes": ex.shard_bytes,
        "single_shard": writer.single_shard,
        "skip_col": "_skip",
    }

    def make_plan() -> shards.Plan:
        rules = load_rules(tables) if versions.get("takedowns") is not None else TakedownRules()
        bound = samples.plan_rows_bound(tables, subset, versions["subsets"], ex.repeats)
        plan = None
        if bound is not None and bound <= ex.local_plan_rows:
            if ex.local_write_bytes and local.eligible(tables):
                plan = _here_plan(rules)
                path["name"] = "here"
            if plan is None:
                plan = _local_plan(rules)
                path["name"] = "driver"
        else:
            plan = _spark_plan(rules)
        skipped.update(plan.skipped)
        skipped["exported"] = plan.samples
        return plan

    def _here_plan(rules: TakedownRules) -> shards.Plan | None:
        # delta-rs reads and the plan here; None when the payload is too big to hold
        seeded = ex.shuffle_seed is not None
        read = local.read_subset(
            tables,
            subset,
            versions,
            writer.needs,
            model_id,
            ex.repeats,
            ex.shuffle_seed,
            ex.local_write_bytes,
        )
        if read is None:
            return None
        table = samples.resolve_local(read.rows, rules, local.md5_blocked(read, rules.md5), seeded)
        order = ["_order", "key"] if seeded else ["key"]
        planned, n_shards, skipped_rows = shards.plan_table(table, order=order, **how)
        planned = local.with_payload(planned, read, writer.needs)
        threads = ex.local_threads or os.cpu_count() or 1
        return shards.Plan(None, n_shards, planned.num_rows, skipped_rows, True, planned, threads)

    def _local_plan(rules: TakedownRules) -> shards.Plan:
        # the narrow rows collected once (one Spark job); keys, takedowns and the plan on
        # the driver: the same rows, keys and cuts as _spark_plan
        narrow = samples.narrow_frame(tables, subset, versions, writer.needs, model_id)
        seeded = ex.shuffle_seed is not None
        table = samples.local_rows(narrow, ex.repeats, ex.shuffle_seed).toArrow()
        md5_ids = samples.md5_blocked(tables, versions, rules)
        table = samples.resolve_local(table, rules, md5_ids, seeded)
        order = ["_order", "key"] if seeded else ["key"]
        return shards.plan_local(spark, table, order=order, **how)

    def _spark_plan(rules: TakedownRules) -> shards.Plan:
        narrow = samples.narrow_frame(tables, subset, versions, writer.needs, model_id, rules)
        rows = samples.keyed_rows(narrow, ex.repeats)
        order = [F.col("key")]
        if ex.shuffle_seed is not None:
            order.insert(0, samples.seed_order(ex.shuffle_seed, F.col("key")))
        return shards.plan_shards(rows, order, **how)

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
        # built only for a Spark write (a plan written here carries its own payload)
        payload=lambda: samples.payload_frame(tables, versions, writer.needs, model_id),
        broadcast_rows=ex.broadcast_plan_rows,
        force=force,
        tables=tables,
    )
    manifest = res.manifest
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
            "phases": res.phases,  # seconds of plan, write, manifest, record
            # here: delta-rs reads, written in this process; driver: planned on the driver
            # from a Spark collect, written by Spark tasks; spark: planned and written by Spark
            "path": path["name"],
        },
    )


def table_versions(tables: Tables, names) -> dict[str, int | None]:
    """Tables.data_version of each table (the last commit that changed its rows), asked
    concurrently (for catalog tables each is a small Spark job)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(names)) as pool:
        return dict(zip(names, pool.map(tables.data_version, names), strict=True))

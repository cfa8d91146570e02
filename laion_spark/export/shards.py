"""Shard sets on any filesystem: plan rows into shards, write one shard per Spark task,
and keep a target folder consistent across kills and re-runs.

The guarantees, and how:

- **Atomic shards.** Writers put every file under a hidden temporary name and rename it
  when the shard is complete; then the task writes the shard's marker `_shards/<n>.json`
  (the inputs digest, its files, its count). A killed run leaves complete shards and
  temporary files (deleted by the next run), never a partial file under a final name.
- **Idempotence.** The inputs digest covers the Delta versions read and every option. A
  run whose digest equals the one in `_SUCCESS` (and whose files are all there) rewrites
  nothing. After a kill, shards whose marker carries the current digest are kept and only
  the others are written; a changed input replaces the previous export's shards.
- **Exact plan.** Rows are sorted once (narrow columns only, no image bytes), numbered
  with per-partition offsets (no single-partition window), cut into shards by count or
  by bytes, and routed with a hash partitioning chosen so that shard s lands exactly in
  partition s: one shard per task, every sample of the plan written exactly once. A
  small plan (`plan_table`) is made on the driver from the collected narrow rows with
  the same order and the same cuts: one Spark job instead of a sort, a checkpoint and
  a count, which were most of a small export's time.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from laion_spark import storage

log = logging.getLogger(__name__)

MANIFEST = "_SUCCESS"
MARKERS = "_shards"
LAYOUT_VERSION = 1  # bump when a format's bytes change: old exports then count as stale

RESULT_SCHEMA = T.StructType(
    [
        T.StructField("shard", T.LongType()),
        T.StructField("files", T.ArrayType(T.StringType())),
        T.StructField("count", T.LongType()),
        T.StructField("bytes", T.LongType()),
        T.StructField("seconds", T.DoubleType()),
    ]
)


def digest_of(inputs: dict[str, Any]) -> str:
    import hashlib

    text = json.dumps(inputs, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def normalize_target(target: str) -> str:
    """Local paths absolute (the export id is a hash of the target), URIs as given."""
    target = target.rstrip("/") or "/"
    return os.path.abspath(os.path.expanduser(target)) if storage.is_local(target) else target


def export_id(target: str) -> str:
    import hashlib

    return hashlib.sha256(normalize_target(target).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------- plan


@dataclass
class Plan:
    rows: DataFrame | None  # the planned rows + shard (long) + _pos (long: global order)
    shards: int
    samples: int
    skipped: dict[str, int] = field(default_factory=dict)  # rows left out, by reason
    routed: bool = False  # rows carry `_route` already (plans made on the driver)
    # a plan written in this process (export.local): the planned rows in (shard, _pos)
    # order with their payload, as an Arrow table; `rows` is then None
    table: Any = None
    threads: int = 1


def plan_table(
    table: Any,
    order: list[str],
    shard_samples: int,
    shard_bytes: int | None = None,
    size_col: str = "size",
    single_shard: bool = False,
    skip_col: str | None = None,
) -> tuple[Any, int, dict[str, int]]:
    """`plan_shards` on the driver, for an Arrow table of rows: (planned rows sorted by
    `order` (column names, ascending: a total order) with `_pos`, `shard` and `_route`;
    the shard count; skipped rows by reason). Same order and cuts as `plan_shards`."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    skipped: dict[str, int] = {}
    if skip_col:
        reasons = table.column(skip_col)
        for r in pc.value_counts(reasons.drop_null()).to_pylist():
            skipped[r["values"]] = int(r["counts"])
        table = table.filter(pc.is_null(reasons)).drop_columns([skip_col])
    table = table.sort_by([(c, "ascending") for c in order])
    n = table.num_rows
    table = table.append_column("_pos", pa.array(np.arange(n, dtype=np.int64)))
    if single_shard or not n:
        shard = np.zeros(n, np.int64)
    elif shard_bytes is None:
        shard = np.arange(n, dtype=np.int64) // shard_samples
    else:
        size = table.column(size_col).to_numpy(zero_copy_only=False).astype(np.int64)
        start = np.cumsum(size) - size  # bytes before each row
        # a sample bigger than shard_bytes skips numbers: renumber the shards densely
        shard = np.unique(start // shard_bytes, return_inverse=True)[1].astype(np.int64)
    shards = int(shard[-1]) + 1 if n else 0
    routes = np.array(route_values(shards), np.int64)
    table = table.append_column("shard", pa.array(shard))
    table = table.append_column("_route", pa.array(routes[shard] if n else shard))
    return table, shards, skipped


def plan_local(spark, table: Any, **how: Any) -> Plan:
    """A Plan of an Arrow table of rows planned on the driver (see `plan_table`)."""
    planned, shards, skipped = plan_table(table, **how)
    rows = spark.createDataFrame(planned) if planned.num_rows else None
    if rows is None:  # createDataFrame needs rows to infer nothing; keep the schema
        from pyspark.sql.pandas.types import from_arrow_schema

        rows = spark.createDataFrame([], from_arrow_schema(planned.schema))
    return Plan(rows, shards, planned.num_rows, skipped, routed=True)


def plan_shards(
    rows: DataFrame,
    order: list[Column],
    shard_samples: int,
    shard_bytes: int | None = None,
    size_col: str = "size",
    single_shard: bool = False,
    skip_col: str | None = None,
) -> Plan:
    """Number `rows` in `order` (must be a total order) and cut them into shards.

    Rows whose `skip_col` is set (a reason) are counted by reason and left out: they sort
    after every planned row, so they never shift a planned row's position.
    """
    spark = rows.sparkSession
    skip = F.col(skip_col) if skip_col else F.lit(None).cast("string")
    ordered = (
        rows.withColumn("_skip", skip)
        .orderBy(F.col("_skip").isNotNull(), *order)
        .withColumn("_part", F.spark_partition_id())
        .withColumn("_mid", F.monotonically_increasing_id())
        .localCheckpoint(eager=True)  # fixes the order's partitioning for the steps below
    )
    parts = ordered.groupBy("_part", "_skip").agg(
        F.count(F.lit(1)).alias("n"), F.sum(F.col(size_col)).alias("b")
    )
    stats, skipped = [], {}
    for r in parts.collect():
        if r["_skip"] is None:
            stats.append((int(r["_part"]), int(r["n"]), int(r["b"] or 0)))
        else:
            skipped[r["_skip"]] = skipped.get(r["_skip"], 0) + int(r["n"])
    stats.sort()
    total = sum(n for _, n, _ in stats)
    offsets_n, offsets_b, acc_n, acc_b = {}, {}, 0, 0
    for p, n, b in stats:
        offsets_n[p], offsets_b[p] = acc_n, acc_b
        acc_n += n
        acc_b += b

    def lookup(table: dict[int, int]) -> Column:
        if not table:
            return F.lit(0).cast("long")
        pairs = [x for p, o in table.items() for x in (F.lit(p), F.lit(o).cast("long"))]
        return F.create_map(*pairs)[F.col("_part")]

    # planned rows come first in every partition, so their index there is their rank
    index_in_part = F.col("_mid") - F.shiftleft(F.col("_part").cast("long"), 33)
    df = ordered.where(F.col("_skip").isNull()).drop("_skip")
    df = df.withColumn("_pos", lookup(offsets_n) + index_in_part)
    if single_shard:
        df = df.withColumn("shard", F.lit(0).cast("long"))
        return Plan(df, 1 if total else 0, total, skipped)
    if shard_bytes is None:
        df = df.withColumn("shard", F.floor(F.col("_pos") / F.lit(shard_samples)).cast("long"))
        return Plan(df, -(-total // shard_samples), total, skipped)
    from pyspark.sql import Window

    before = F.sum(F.col(size_col)).over(
        Window.partitionBy("_part").orderBy("_mid").rowsBetween(Window.unboundedPreceding, -1)
    )
    start = lookup(offsets_b) + F.coalesce(before, F.lit(0))
    df = df.withColumn("_raw", F.floor(start / F.lit(shard_bytes)).cast("long"))
    # a sample bigger than shard_bytes skips numbers: renumber the shards densely
    raw = sorted(r[0] for r in df.select("_raw").distinct().collect())
    dense = spark.createDataFrame([(r, i) for i, r in enumerate(raw)], "_raw long, shard long")
    df = df.join(F.broadcast(dense), "_raw").drop("_raw")
    return Plan(df, len(raw), total, skipped)


def _spark_hash_long(value: int, seed: int = 42) -> int:
    """Spark's `hash()` of a LongType value (Murmur3_x86_32.hashLong, seed 42), as int32."""
    mask = 0xFFFFFFFF

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (32 - r))) & mask

    def mix(h1: int, k1: int) -> int:
        k1 = rotl((k1 * 0xCC9E2D51) & mask, 15) * 0x1B873593 & mask
        h1 = rotl(h1 ^ k1, 13)
        return (h1 * 5 + 0xE6546B64) & mask

    value &= 0xFFFFFFFFFFFFFFFF
    h1 = mix(mix(seed & mask, value & mask), value >> 32)
    h1 ^= 8
    h1 ^= h1 >> 16
    h1 = (h1 * 0x85EBCA6B) & mask
    h1 ^= h1 >> 13
    h1 = (h1 * 0xC2B2AE35) & mask
    h1 ^= h1 >> 16
    return h1 - (1 << 32) if h1 & 0x80000000 else h1


def route_values(n: int) -> list[int]:
    """For each shard s < n a long v with pmod(hash(v), n) == s. Spark's hash partitioning
    of `repartition(n, col)` is exactly pmod(hash(col), n), so routing shard s by v puts it
    in partition s: one shard per task, and no task idle while another writes two."""
    found: dict[int, int] = {}
    v = 0
    while len(found) < n:
        found.setdefault(_spark_hash_long(v) % n, v)
        v += 1
    return [found[s] for s in range(n)]


# ----------------------------------------------------------------------------- the task


# tests: the task writing this shard dies mid-way, as a killed executor (read from the
# task's environment, or from the driver's, which passes it on to the tasks)
CRASH_ENV = "LAION_SPARK_TEST_CRASH_IN_SHARD"


def _crash_shard(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


@dataclass
class TaskSpec:
    """What every write task needs (pickled into the closure)."""

    target: str
    writer: type
    digits: int
    digest: str
    crash_in_shard: int | None = None  # the driver's CRASH_ENV


def marker_path(target: str, shard: int) -> str:
    return storage.join(target, MARKERS, f"{shard}.json")


def write_partition(batches, spec: TaskSpec):
    """mapInArrow body: the batches of one partition (sorted by shard, _pos) -> shards."""
    import pyarrow as pa
    from pyspark import TaskContext

    ctx = TaskContext.get()
    crash = _crash_shard(os.environ.get(CRASH_ENV))
    crash = spec.crash_in_shard if crash is None else crash
    token = uuid.uuid4().hex[:12]
    if ctx is not None:
        token = f"{ctx.stageId()}-{ctx.partitionId()}-{ctx.attemptNumber()}-{token}"
    writer = None

    def done(w) -> pa.RecordBatch:
        info = w.close()
        marker = {**info, "digest": spec.digest}
        storage.write_bytes(marker_path(spec.target, w.shard), json.dumps(marker).encode())
        return pa.RecordBatch.from_pylist(
            [{k: info[k] for k in RESULT_SCHEMA.fieldNames()}],
            schema=pa.schema(
                [
                    ("shard", pa.int64()),
                    ("files", pa.list_(pa.string())),
                    ("count", pa.int64()),
                    ("bytes", pa.int64()),
                    ("seconds", pa.float64()),
                ]
            ),
        )

    try:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            shards = batch.column("shard").to_numpy()
            start = 0
            while start < batch.num_rows:
                s = int(shards[start])
                end = start + 1
                while end < batch.num_rows and shards[end] == s:
                    end += 1
                if writer is None or writer.shard != s:
                    if writer is not None:
                        yield done(writer)
                    writer = spec.writer(spec.target, s, spec.digits, token)
                writer.write_batch(batch.slice(start, end - start))
                if crash == s:
                    os._exit(17)  # as a killed executor: temporary files stay behind
                start = end
        if writer is not None:
            yield done(writer)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise


def write_here(table: Any, todo: list[int], spec: TaskSpec, threads: int) -> list[dict[str, Any]]:
    """The shards `todo` of a plan made in this process (an Arrow table sorted by shard,
    _pos), each written by `write_partition` as a Spark task would, `threads` at once
    (tar and file writes release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    shard = table.column("shard").to_numpy()
    starts = np.searchsorted(shard, todo, side="left")
    ends = np.searchsorted(shard, todo, side="right")

    def one(i: int) -> list[dict[str, Any]]:
        part = table.slice(int(starts[i]), int(ends[i] - starts[i]))
        out = write_partition(iter(part.to_batches()), spec)
        return [r for b in out for r in b.to_pylist()]

    with ThreadPoolExecutor(max(1, min(threads, len(todo)))) as pool:
        return [r for rs in pool.map(one, range(len(todo))) for r in rs]


# ------------------------------------------------------------------------ target state


@dataclass
class TargetState:
    """What is in the target folder now: files, the manifest, shard markers."""

    target: str
    files: dict[str, int]
    manifest: dict[str, Any] | None
    markers: dict[int, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def read(cls, target: str) -> TargetState:
        files = storage.list_files(target)
        manifest = None
        if MANIFEST in files:
            try:
                manifest = json.loads(storage.read_bytes(storage.join(target, MANIFEST)))
            except (ValueError, OSError):
                manifest = None
        state = cls(target, files, manifest)
        for rel in files:
            if (
                rel.startswith(MARKERS + "/")
                and rel.endswith(".json")
                and not storage.is_tmp_name(rel)
            ):
                try:
                    m = json.loads(storage.read_bytes(storage.join(target, rel)))
                    state.markers[int(m["shard"])] = m
                except (ValueError, OSError, KeyError):
                    storage.remove(storage.join(target, rel))
        return state

    def complete(self, files: list[str]) -> bool:
        return all(f in self.files for f in files)

    def up_to_date(self, digest: str) -> bool:
        m = self.manifest
        if not m or m.get("inputs_digest") != digest:
            return False
        return self.complete([f for s in m.get("shards", []) for f in s["files"]])

    def prepare(self, digest: str) -> dict[int, dict[str, Any]]:
        """Clear what a new run must not keep; the shards already written for `digest`."""
        if MANIFEST in self.files:
            storage.remove(storage.join(self.target, MANIFEST))
        for rel in self.files:
            if storage.is_tmp_name(rel):
                storage.remove(storage.join(self.target, rel))
        keep = {}
        for shard, m in self.markers.items():
            if m.get("digest") == digest and self.complete(m.get("files", [])):
                keep[shard] = m
                continue
            # a shard of other inputs (or incomplete): its files go, then its marker
            for rel in m.get("files", []):
                storage.remove(storage.join(self.target, rel))
            storage.remove(marker_path(self.target, shard))
        return keep


# ------------------------------------------------------------------------------ driver


@dataclass
class ShardSetResult:
    manifest: dict[str, Any]
    written: int  # shards written by this run
    kept: int  # shards of an interrupted run with the same inputs, kept as they were
    up_to_date: bool
    phases: dict[str, float] = field(default_factory=dict)  # seconds: plan, write, record


def write_shard_set(
    *,
    target: str,
    writer: type,
    digest: str,
    describe: dict[str, Any],
    make_plan,
    payload,
    broadcast_rows: int,
    force: bool = False,
    tables=None,
) -> ShardSetResult:
    """Write the shards `make_plan()` plans (joined with `payload` on sample_id when given)
    under `target`, unless `_SUCCESS` already holds `digest`; then write `_SUCCESS` and,
    given `tables`, record the target in `exports` (export and reshard both end so).

    `payload`: a DataFrame keyed by sample_id, a callable returning one, or None.
    `describe`: what the manifest says besides shards and counts (subset, format, Delta
    versions, options, config, skipped counts).
    """
    target = normalize_target(target)
    state = TargetState.read(target)
    if not force and state.up_to_date(digest):
        log.info("export %s is up to date (inputs digest %s): nothing to write", target, digest)
        return ShardSetResult(state.manifest or {}, 0, 0, True)
    keep = state.prepare("" if force else digest)
    clock = time.perf_counter()
    phases: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = round(now - clock, 3)
        clock = now

    plan: Plan = make_plan()
    lap("plan")
    digits = max(5, len(str(max(plan.shards - 1, 0))))
    todo = [s for s in range(plan.shards) if s not in keep]
    results: list[dict[str, Any]] = [
        {k: m[k] for k in ("shard", "files", "count", "bytes")} for m in keep.values()
    ]
    if todo and plan.table is not None:
        spec = TaskSpec(target, writer, digits, digest)
        results += write_here(plan.table, todo, spec, plan.threads)
    elif todo:
        if callable(payload):  # a payload that only exists once the plan's pass has run
            payload = payload()
        rows = plan.rows
        if len(keep):
            rows = rows.where(~F.col("shard").isin(*sorted(keep)))
        if payload is not None:
            small = plan.samples <= broadcast_rows
            rows = payload.join(F.broadcast(rows) if small else rows, "sample_id")
        if not plan.routed:
            spark = plan.rows.sparkSession
            routes = route_values(plan.shards)
            route = spark.createDataFrame(list(enumerate(routes)), "shard long, _route long")
            rows = rows.join(F.broadcast(route), "shard")
        rows = rows.repartition(plan.shards, "_route").sortWithinPartitions("shard", "_pos")
        crash = _crash_shard(os.environ.get(CRASH_ENV))
        spec = TaskSpec(target, writer, digits, digest, crash)

        def fn(batches):
            yield from write_partition(batches, spec)

        written = rows.mapInArrow(fn, RESULT_SCHEMA).collect()
        results += [r.asDict() for r in written]
    lap("write")
    results.sort(key=lambda r: r["shard"])
    if [r["shard"] for r in results] != list(range(plan.shards)):
        raise RuntimeError(
            f"export to {target}: planned {plan.shards} shards, got {[r['shard'] for r in results]}"
        )
    if sum(int(r["count"]) for r in results) != plan.samples:
        raise RuntimeError(
            f"export to {target}: planned {plan.samples} samples, shards hold "
            f"{sum(int(r['count']) for r in results)}"
        )
    manifest = {
        **describe,
        "target": target,
        "export_id": export_id(target),
        "created_at": datetime.now(UTC).isoformat(),
        "inputs_digest": digest,
        "layout_version": LAYOUT_VERSION,
        "samples": sum(int(r["count"]) for r in results),
        "bytes": sum(int(r["bytes"]) for r in results),
        "shard_count": plan.shards,
        "shards": [
            {
                k: (list(r[k]) if k == "files" else int(r[k]))
                for k in ("shard", "files", "count", "bytes")
            }
            for r in results
        ],
    }
    storage.write_bytes(
        storage.join(target, MANIFEST), json.dumps(manifest, indent=1, default=str).encode()
    )
    lap("manifest")
    if tables is not None:
        record_export(tables, manifest)
        lap("record")
    return ShardSetResult(manifest, len(todo), len(keep), False, phases)


def record_export(tables, manifest: dict[str, Any]) -> None:
    """One row per target in `exports`: what is there now, and where its manifest is."""
    from laion_spark.tables import SPECS

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
        "manifest_path": storage.join(target, MANIFEST),
        "inputs_digest": manifest["inputs_digest"],
        "delta_versions": {
            k: int(v) for k, v in (manifest.get("delta_versions") or {}).items() if v is not None
        },
    }
    # one delta-rs MERGE here: no Spark job (Spark's MERGE when delta-rs cannot)
    if tables.local("exports") and tables.upsert_rows_local([row], "exports"):
        return
    df = tables.spark.createDataFrame([row], SPECS["exports"].schema)
    if _known_export(tables, row["export_id"]):
        tables.upsert(df, "exports", dedup=False)
    else:  # a new target: a plain append, not a MERGE
        tables.append(df, "exports")


def _known_export(tables, export_id: str) -> bool:
    """`exports` has a row for `export_id` (read by delta-rs for local path tables: no
    Spark job; by Spark otherwise)."""
    if not tables.database and storage.is_local(tables.location("exports")):
        from laion_spark.lake import Lake

        rows = Lake(tables.cfg).read("exports", ["export_id"], ("export_id", export_id))
        return rows is not None and len(rows) > 0
    if not tables.exists("exports"):
        return False
    rows = tables.read("exports").where(F.col("export_id") == F.lit(export_id)).limit(1)
    return bool(rows.count())

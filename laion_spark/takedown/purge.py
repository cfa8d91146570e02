"""`laion-spark purge` / `takedown --purge`: physically erase taken-down samples.

A takedown deletes rows (a new Delta version), but the bytes stay on disk: in the data
files of older versions, in the transaction log (per-file min/max statistics hold the first
32 characters of string columns such as `url`, in the JSON commits and `.crc` files), in
faiss shards and superseded merged index files, and in exports. Purge, for the requests
given (default: every request not yet purged):

1. makes sure no table still holds a resolved sample (repeats the DELETE; a no-op normally)
   and replaces the value of url requests by `sha256:<hex of the normalised URL>`, so the
   takedowns table itself keeps no URL in clear (the rules still block it by hash);
2. index files: every shard that held a purged faiss id is rewritten without it (deleted
   when left empty), the index is merged again from the clean shards, then every other
   merged file of the index is deleted (a fresh merge never copies slack bytes of removed
   entries, which `remove_ids` on on-disk inverted lists can leave behind); local cache
   copies of those files go too;
3. exports recorded in the `exports` table are rewritten or listed (exports.py);
4. every table is VACUUMed with `takedown.purge_retain_hours` (0 by default): data files no
   longer in the current version are deleted, and so are files no commit references;
   tables with deletion vectors are first rewritten with REORG ... APPLY (PURGE), since a
   deletion vector only hides rows that stay in the file;
5. with retention 0, the transaction log is cut at a fresh checkpoint: commits, checksum
   (.crc) files and checkpoints of earlier versions are deleted, as their statistics hold
   prefixes of the erased values;
6. one `purges` row records what was erased, and the requests get purge_id / purged_at.

What it costs: time travel to any version before the purge is gone (data files and log),
and a reader still scanning an older snapshot (a long Spark job started before) fails
with a missing file; writers committing during the purge may need a retry. Set
`takedown.purge_retain_hours` to leave such readers a window: files superseded within it
stay on disk, the log is kept, and the purge is recorded as incomplete (run it again
later). Delta's own retention check (7 days) is turned off for the purge's VACUUM only.
Not covered: filesystem-level remanence (a deleted file's blocks are not overwritten),
snapshots and backups of the storage, copies outside the workdir, and the free-text
`reason` of a request.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import time
import uuid

from pyspark.sql import functions as F

from laion_spark import storage
from laion_spark.config import Config
from laion_spark.tables import SPECS, Tables
from laion_spark.takedown.exports import Needles, purge_exports
from laion_spark.takedown.request import delete_samples
from laion_spark.takedown.rules import HASHED_PREFIX, url_hash

log = logging.getLogger(__name__)
_LOG_FILE = re.compile(r"^(\d{20})\.(json|crc|checkpoint(\.\d+\.\d+)?\.parquet)$")


def _requests(tables: Tables, request_ids: list[str] | None) -> list[dict]:
    if not tables.exists("takedowns"):
        return []
    df = tables.read("takedowns")
    if request_ids is not None:
        df = df.where(F.col("request_id").isin(list(request_ids)))
    elif "purged_at" in df.columns:
        df = df.where(F.col("purged_at").isNull())
    return [r.asDict(recursive=True) for r in df.collect()]


def _hash_url_values(tables: Tables, reqs: list[dict]) -> int:
    """Replace url request values by their hash; returns how many rows changed."""
    rows = [
        (r["request_id"], HASHED_PREFIX + url_hash(r["value"]))
        for r in reqs
        if r["kind"] == "url" and r["value"] and not r["value"].startswith(HASHED_PREFIX)
    ]
    if rows:
        df = tables.spark.createDataFrame(rows, "request_id string, value string")
        tables.upsert(df, "takedowns")
    return len(rows)


# ---------------------------------------------------------------------------- index files
def _rewrite_shard(cfg: Config, path: str, ids: set[int]) -> tuple[str, int, int]:
    """Remove `ids` from one shard file: ("rewritten" | "deleted" | "untouched", removed,
    remaining)."""
    import faiss
    import numpy as np

    from laion_spark.index import build

    local = storage.local_copy(
        path, os.path.join(os.path.expanduser(cfg.index.local_cache), "purge")
    )
    index = faiss.read_index(local)
    before = int(index.ntotal)
    index.remove_ids(faiss.IDSelectorBatch(np.array(sorted(ids), dtype="int64")))
    after = int(index.ntotal)
    if after == before:
        return "untouched", 0, after
    if after == 0:
        fs, p = storage.fs_path(path)
        fs.rm(p)
        return "deleted", before, 0
    storage.write_bytes(path, build.serialize(index))  # tmp + rename: a fresh file
    return "rewritten", before - after, after


def _purge_index(spark, cfg: Config, tables: Tables, name: str, ids: set[int], shards: set[str]):
    """Rewrite the shards of index `name` that held `ids`, merge again, drop old merged
    files. Returns (entries for the purge record, paths whose local cache copies go)."""
    from laion_spark.index.merge import merge_index
    from laion_spark.index.paths import resolve, to_manifest
    from laion_spark.index.stage import _manifest_df

    man = tables.read("index_manifest").where(F.col("index_name") == name)
    rows = man.collect()
    entries: list[str] = []
    gone_paths: list[str] = []
    shard_rows = [r for r in rows if r["kind"] == "shard"]
    # shards named by the resolution; an old takedown without one: every shard of the index
    todo = [r for r in shard_rows if r["shard"] in shards] if shards else shard_rows
    updated, dropped = [], []
    for r in todo:
        path = resolve(cfg, r["path"])
        if not storage.exists(path):
            continue
        what, removed, left = _rewrite_shard(cfg, path, ids)
        if what == "untouched":
            continue
        entries.append(f"{what}: {r['path']} (-{removed})")
        gone_paths.append(path)
        if what == "deleted":
            dropped.append(r["shard"])
        else:
            row = {k: r[k] for k in r.asDict() if k != "created_at"}
            row.update(count=left, size_bytes=storage.size(path))
            updated.append(row)
    if updated:
        tables.upsert(_manifest_df(spark, updated), "index_manifest")
    if dropped:
        keys = spark.createDataFrame(
            [(name, s) for s in dropped], "index_name string, shard string"
        )
        tables.delete("index_manifest", keys)
    merged = [r for r in rows if r["kind"] == "merged"]
    if not merged and not entries:
        return entries, gone_paths
    remaining = [r for r in shard_rows if r["shard"] not in dropped]
    keep = None
    if remaining:
        index_cfg = dataclasses.replace(cfg, index=dataclasses.replace(cfg.index, name=name))
        res = merge_index(spark, index_cfg, tables, force=True)
        keep = _latest_merged_shard(tables, name)
        entries.append(f"merged: {res.notes.get('path')} ({res.rows_out} vectors)")
    old = [r for r in merged if r["shard"] != keep]
    for r in old:
        path = resolve(cfg, r["path"])
        for f in (path, path[: -len(".index")] + ".ivfdata" if path.endswith(".index") else None):
            if f and storage.exists(f):
                fs, p = storage.fs_path(f)
                fs.rm(p)
                gone_paths.append(f)
                entries.append(f"deleted: {to_manifest(cfg, f)}")
    if old:
        keys = spark.createDataFrame(
            [(name, r["shard"]) for r in old], "index_name string, shard string"
        )
        tables.delete("index_manifest", keys)
    return entries, gone_paths


def _latest_merged_shard(tables: Tables, name: str) -> str | None:
    rows = (
        tables.read("index_manifest")
        .where((F.col("index_name") == name) & (F.col("kind") == "merged"))
        .orderBy(F.col("created_at").desc_nulls_last())
        .limit(1)
        .collect()
    )
    return rows[0]["shard"] if rows else None


def _clear_cache(cfg: Config, paths: list[str]) -> int:
    """Delete local cache copies of purged files and leftover merge work folders."""
    cache = os.path.expanduser(cfg.index.local_cache)
    if not os.path.isdir(cache):
        return 0
    names = {p.rstrip("/").rsplit("/", 1)[-1] for p in paths}
    names |= {n[: -len(".index")] + ".ivfdata" for n in names if n.endswith(".index")}
    n = 0
    for root, _dirs, files in os.walk(cache):
        for f in files:
            if f in names:
                os.remove(os.path.join(root, f))
                n += 1
    for d in os.listdir(cache):
        if d.startswith("merge-") or d == "purge":
            shutil.rmtree(os.path.join(cache, d), ignore_errors=True)
    return n


# ---------------------------------------------------------------------------- Delta files
def _dt(tables: Tables, name: str):
    """delta-rs handle of a path-based table (None for catalog tables)."""
    if tables.database:
        return None
    from deltalake import DeltaTable

    return DeltaTable(tables.location(name))


def _vacuum(tables: Tables, name: str, retain_hours: float) -> int:
    """REORG (deletion vectors) + VACUUM one table; data files deleted."""
    spark = tables.spark
    dt = _dt(tables, name)
    if dt is not None:
        props = dt.metadata().configuration
    else:
        props = tables.delta(name).detail().first()["properties"] or {}
    if str(props.get("delta.enableDeletionVectors", "false")).lower() == "true":
        # deleted rows stay in the files behind a deletion vector until the files are rewritten
        ident = tables.location(name) if tables.database else f"delta.`{tables.location(name)}`"
        spark.sql(f"REORG TABLE {ident} APPLY (PURGE)")  # an identifier, not a value
        dt = _dt(tables, name)
    if dt is not None:
        try:
            return len(
                dt.vacuum(
                    retention_hours=int(retain_hours),
                    dry_run=False,
                    enforce_retention_duration=False,
                    full=True,
                )
            )
        except Exception as e:  # a table feature delta-rs cannot write: Spark's VACUUM
            log.info("delta-rs vacuum of %s failed (%s); using Spark's", name, e)
    key = "spark.databricks.delta.retentionDurationCheck.enabled"
    before = spark.conf.get(key, "true")
    spark.conf.set(key, "false")  # deliberate: purge erases inside Delta's 7-day window
    try:
        tables.delta(name).vacuum(float(retain_hours))
    finally:
        spark.conf.set(key, before)
    return -1  # Spark does not return the count


def _cut_log(tables: Tables, name: str) -> int:
    """Checkpoint the current version and delete every log file of earlier versions
    (commits, .crc checksums, older checkpoints); returns files deleted."""
    dt = _dt(tables, name)
    if dt is None:
        return 0
    dt.create_checkpoint()
    version = dt.version()
    log_dir = storage.join(tables.location(name), "_delta_log")
    fs, p = storage.fs_path(log_dir)
    n = 0
    for f in fs.ls(p, detail=False):
        m = _LOG_FILE.match(f.rstrip("/").rsplit("/", 1)[-1])
        if m and int(m.group(1)) < version:
            fs.rm(f)
            n += 1
    _drop_orphan_sidecars(tables.location(name))
    return n


def _drop_orphan_sidecars(root: str) -> None:
    """Local tables: Hadoop's `.<file>.crc` checksum sidecars of files just deleted, or of
    files delta-rs rewrote (`_last_checkpoint`): a stale checksum makes Spark distrust the
    file, a missing one is simply not checked."""
    if not storage.is_local(root) or not os.path.isdir(root):
        return
    for d, _, files in os.walk(root):
        names = set(files)
        for f in files:
            if not (f.startswith(".") and f.endswith(".crc")):
                continue
            target = os.path.join(d, f[1:-4])
            sidecar = os.path.join(d, f)
            if f[1:-4] not in names or os.path.getmtime(target) > os.path.getmtime(sidecar):
                os.remove(sidecar)


def _forget_snapshots(spark) -> None:
    """Drop Spark's cached Delta snapshots: they name log and data files just deleted."""
    try:
        spark._jvm.org.apache.spark.sql.delta.DeltaLog.clearCache()
    except Exception:  # a platform without the class: the next read lists the log again
        pass


# ---------------------------------------------------------------------------- purge
def purge(
    spark,
    cfg: Config,
    tables: Tables,
    request_ids: list[str] | None = None,
    retain_hours: float | None = None,
) -> dict:
    """Erase the samples of takedown requests (default: all not yet purged); the summary
    written to `purges` as a dict."""
    t0 = time.time()
    retain = cfg.takedown.purge_retain_hours if retain_hours is None else float(retain_hours)
    reqs = _requests(tables, request_ids)
    purge_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    if not reqs:
        return {"purge_id": None, "requests": 0, "notes": "nothing to purge"}
    sample_ids = {s for r in reqs for s in (r.get("sample_ids") or ())}
    if sample_ids:
        delete_samples(tables, sample_ids)  # normally finds nothing: one read-only job
    _hash_url_values(tables, reqs)

    # index files: faiss ids and shards per index from the resolutions
    faiss_ids: dict[str, set[int]] = {}
    shards: dict[str, set[str]] = {}
    unresolved = any(r.get("resolved_at") is None and (r.get("removed") or {}) for r in reqs)
    for r in reqs:
        for name, ids in (r.get("faiss_ids") or {}).items():
            faiss_ids.setdefault(name, set()).update(int(i) for i in ids or ())
        for name, ss in (r.get("shards") or {}).items():
            shards.setdefault(name, set()).update(ss or ())
    index_entries: list[str] = []
    gone: list[str] = []
    for name, ids in sorted(faiss_ids.items()):
        if ids:
            e, g = _purge_index(spark, cfg, tables, name, ids, shards.get(name, set()))
            index_entries += e
            gone += g
    cache_files = _clear_cache(cfg, gone)

    needles = Needles(
        sample_ids,
        {h for r in reqs for h in (r.get("url_hashes") or ())},
        {h for r in reqs for h in (r.get("sha256") or ())},
    )
    export_entries, notes = purge_exports(tables, needles)

    files_removed: dict[str, int] = {}
    log_removed: dict[str, int] = {}
    names = [n for n in SPECS if tables.exists(n)] + (
        ["exports"] if "exports" not in SPECS and tables.exists("exports") else []
    )
    # a final takedowns write first (ids + time), so the vacuum below also erases the
    # version that still held the url values in clear
    done = tables.spark.createDataFrame(
        [(r["request_id"], purge_id) for r in reqs], "request_id string, purge_id string"
    ).withColumn("purged_at", F.current_timestamp())
    tables.upsert(done, "takedowns")
    for name in names:
        files_removed[name] = _vacuum(tables, name, retain)
        if retain == 0:
            log_removed[name] = _cut_log(tables, name)
    _forget_snapshots(spark)
    if retain > 0:
        notes.append(
            f"retain_hours={retain}: files superseded within that window and the log's older "
            "versions stay on disk; run purge again after it to finish erasing"
        )
    if unresolved:
        notes.append(
            "some requests predate resolution (no faiss ids recorded): their vectors cannot "
            "be traced into index shards; rebuild those indexes to erase them there"
        )
    complete = (
        retain == 0 and not unresolved and not any(e.startswith("listed:") for e in export_entries)
    )
    summary = {
        "purge_id": purge_id,
        "request_ids": sorted(r["request_id"] for r in reqs),
        "samples": len(sample_ids),
        "files_removed": files_removed,
        "log_files_removed": log_removed,
        "retain_hours": retain,
        "index_files": index_entries
        + ([f"cache copies deleted: {cache_files}"] if cache_files else []),
        "exports": export_entries,
        "complete": complete,
        "notes": "; ".join(notes),
        "seconds": round(time.time() - t0, 2),
    }
    _record(tables, summary)
    log.info(
        "purge %s: %d request(s), %d sample(s), %d index file(s), %d export file(s)",
        purge_id,
        len(reqs),
        len(sample_ids),
        len(index_entries),
        len(export_entries),
    )
    return summary


def _record(tables: Tables, summary: dict) -> None:
    schema = SPECS["purges"].schema
    cols = [f.name for f in schema.fields if f.name != "started_at"]
    from pyspark.sql import types as T

    df = tables.spark.createDataFrame(
        [[summary.get(c) for c in cols]], T.StructType([schema[c] for c in cols])
    ).withColumn(
        "started_at",
        (F.current_timestamp().cast("double") - F.lit(summary["seconds"])).cast("timestamp"),
    )
    tables.append(df.select(*[f.name for f in schema.fields]), "purges")

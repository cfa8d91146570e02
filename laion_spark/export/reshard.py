"""DataComp resharding as a Spark job: new shards holding exactly the samples of a uid list.

    laion-spark reshard --uids subset.npy --pool /data/pool --to /data/subset_shards

What DataComp's `resharder.py` does: the uid array (numpy `u8,u8`, sorted or not: ours
from `export --format uids` or DataComp's) selects samples of a WebDataset pool; their
member files are copied byte for byte, with their keys, into new shards of
`export.shard_samples` (or `export.shard_bytes`), in pool order (or shuffled with
`export.shuffle_seed`). A sample's uid comes from the shard's parquet (uid, key) when it
is there, else from the sample's json.

Pass 1 (one task per pool tar) keeps the selected samples; the shard-set machinery of
laion_spark.export.shards then plans and writes the output (atomic shards, markers,
`_SUCCESS` with the inputs digest, an `exports` row), exactly as `export` does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import functions as F

from laion_spark import storage
from laion_spark.config import Config
from laion_spark.export import shards
from laion_spark.export.pool import list_shards, read_tar, sibling_parquet
from laion_spark.export.writers import WebDatasetWriter
from laion_spark.stage import StageResult
from laion_spark.tables import Tables

log = logging.getLogger(__name__)

UID_DTYPE = np.dtype("u8,u8")
SELECTED_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),  # "<pool shard index>:<index in tar>": unique in the pool
        ("key", pa.string()),
        ("uid", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("source_shard", pa.string()),
        ("src", pa.int64()),
        ("idx", pa.int64()),
        ("size", pa.int64()),
        ("members", pa.list_(pa.struct([("ext", pa.string()), ("data", pa.binary())]))),
        ("problem", pa.string()),  # bad_shard (with the error as uid), else null
    ]
)
SELECTED_DDL = (
    "sample_id string, key string, uid string, url string, caption string, "
    "source_shard string, src long, idx long, size long, "
    "members array<struct<ext: string, data: binary>>, problem string"
)


def load_uids(path: str) -> np.ndarray:
    """A uid file as a sorted, unique `u8,u8` array (DataComp's subset format)."""
    arr = np.load(io.BytesIO(storage.read_bytes(path)))
    if arr.dtype != UID_DTYPE:
        raise ValueError(
            f"{path}: uid array has dtype {arr.dtype}, expected DataComp's u8,u8 "
            "(from `laion-spark export --format uids` or DataComp's subset files)"
        )
    return np.unique(arr)


def _as_uid(value: Any) -> tuple[int, int] | None:
    text = str(value or "").strip().lower()
    if len(text) != 32:
        return None
    try:
        return int(text[:16], 16), int(text[16:], 16)
    except ValueError:
        return None


class PoolShardWriter(WebDatasetWriter):
    """A WebDataset shard whose samples are copied member by member from a pool."""

    SCHEMA = pa.schema(
        [
            ("key", pa.string()),
            ("uid", pa.string()),
            ("url", pa.string()),
            ("caption", pa.string()),
            ("source_shard", pa.string()),
        ]
    )

    def members(self, row: dict[str, Any], meta: dict[str, Any]) -> list[tuple[str, bytes]]:
        return [(m["ext"], m["data"]) for m in row["members"]]

    def meta(self, row: dict[str, Any]) -> dict[str, Any]:
        return {n: row.get(n) for n in self.SCHEMA.names}

    def meta_schema(self) -> pa.Schema:
        return self.SCHEMA


def select_partition(batches, uids: np.ndarray, max_member_bytes: int):
    """mapInArrow body: pool tars -> their samples whose uid is in `uids`."""
    for batch in batches:
        for src, path in zip(
            batch.column("src").to_pylist(), batch.column("path").to_pylist(), strict=True
        ):
            read = read_tar(path, max_member_bytes)
            listed = {str(r.get("key")): r.get("uid") for r in sibling_parquet(path)}
            shard = path.rstrip("/").rsplit("/", 1)[-1][: -len(".tar")]
            rows = []
            for s in read.samples:
                meta = s.meta()
                rows.append((s, meta, _as_uid(listed.get(s.key) or meta.get("uid"))))
            found = np.zeros(len(rows), bool)
            ok = [i for i, (_, _, u) in enumerate(rows) if u is not None]
            if ok and len(uids):
                probe = np.array([rows[i][2] for i in ok], UID_DTYPE)
                at = np.minimum(np.searchsorted(uids, probe), len(uids) - 1)
                found[ok] = uids[at] == probe
            out = []
            for i, (s, meta, uid) in enumerate(rows):
                if not found[i]:
                    continue
                files = [{"ext": ext, "data": data} for ext, data in s.files.items()]
                out.append(
                    {
                        "sample_id": f"{src}:{s.index}",
                        "key": s.key,
                        "uid": f"{uid[0]:016x}{uid[1]:016x}",
                        "url": meta.get("url"),
                        "caption": s.caption(),
                        "source_shard": shard,
                        "src": src,
                        "idx": s.index,
                        "size": sum(len(f["data"]) for f in files) + 1536,
                        "members": files,
                    }
                )
            if read.error:
                out.append({"sample_id": f"{src}:error", "problem": "bad_shard", "uid": read.error})
            if out:
                yield pa.RecordBatch.from_pylist(out, schema=SELECTED_SCHEMA)


def reshard(
    spark,
    cfg: Config,
    tables: Tables,
    uids: str,
    pool: str,
    to: str,
    force: bool = False,
) -> StageResult:
    """Write the samples of `pool` whose uid is listed in `uids` as new shards under `to`."""
    t0 = time.time()
    ex = cfg.export
    tars = list_shards(pool)
    if not tars:
        return StageResult("reshard", error=f"no .tar shards under {pool}")
    uid_bytes = storage.read_bytes(uids)
    wanted = load_uids(uids)
    listing = {p: storage.size(p) for p in tars}
    options = {
        "shard_samples": ex.shard_samples,
        "shard_bytes": ex.shard_bytes,
        "shuffle_seed": ex.shuffle_seed,
    }
    digest = shards.digest_of(
        {
            "uids_sha256": hashlib.sha256(uid_bytes).hexdigest(),
            "pool": listing,
            "options": options,
            "layout": shards.LAYOUT_VERSION,
        }
    )
    skipped: dict[str, int] = {}
    bc = spark.sparkContext.broadcast(wanted)
    max_bytes = ex.max_member_bytes
    selected_holder: dict[str, Any] = {}

    def fn(batches):
        yield from select_partition(batches, bc.value, max_bytes)

    def make_plan() -> shards.Plan:
        paths = spark.createDataFrame(list(enumerate(tars)), "src long, path string")
        selected = paths.repartition(len(tars)).mapInArrow(fn, SELECTED_DDL)
        selected = selected.localCheckpoint(eager=True)  # the pool is read once
        selected_holder["df"] = selected
        bad = selected.where(F.col("problem").isNotNull()).select("uid").collect()
        if bad:
            skipped["bad_shards"] = len(bad)
            log.warning("reshard: %d pool shard(s) unreadable to the end: %s", len(bad), bad[0][0])
        narrow = selected.where(F.col("problem").isNull()).drop("members", "problem")
        order = [F.col("src"), F.col("idx")]
        if ex.shuffle_seed is not None:
            order.insert(0, F.xxhash64(F.lit(int(ex.shuffle_seed)), F.col("sample_id")))
        plan = shards.plan_shards(narrow, order, ex.shard_samples, ex.shard_bytes)
        skipped["selected"] = plan.samples
        return plan

    describe = {
        "kind": "reshard",
        "subset": uids,
        "format": "webdataset",
        "pool": pool,
        "uids": uids,
        "uid_count": int(len(wanted)),
        "options": options,
        "delta_versions": {},
        "skipped": skipped,
        "config": dataclasses.asdict(cfg),
    }
    res = shards.write_shard_set(
        target=to,
        writer=PoolShardWriter,
        digest=digest,
        describe=describe,
        make_plan=make_plan,
        # built after pass 1: the selected rows' member bytes, joined to the plan
        payload=lambda: selected_holder["df"].select("sample_id", "members"),
        broadcast_rows=ex.broadcast_plan_rows,
        force=force,
        tables=tables,
    )
    manifest = res.manifest
    n = int(manifest.get("samples", 0))
    return StageResult(
        "reshard",
        rows_in=int(len(wanted)),
        rows_out=n,
        by_status={"up_to_date": n}
        if res.up_to_date
        else {"written": n, **{k: v for k, v in skipped.items() if k != "selected"}},
        seconds=time.time() - t0,
        notes={
            "target": manifest.get("target"),
            "shards": manifest.get("shard_count", 0),
            "pool_shards": len(tars),
            "uids_not_in_pool": int(len(wanted)) - n if not res.up_to_date else 0,
        },
    )

"""Import a WebDataset pool (img2dataset / DataComp layout) into `candidates` and `images`.

    laion-spark import /data/pool --flavor webdataset

One Spark task per tar: each sample becomes a candidate (url and caption from its json /
txt / the shard's parquet; sample_id from them as everywhere) and an `images` row with the
stored bytes untouched (sha256, size, format, width/height from the json or the image
header). Samples the shard's parquet lists as failed become rows with that status and
error_message. The pool's key, shard and DataComp uid are kept (candidates.original_id =
uid, else the key; original_meta holds key, shard and the json's other fields), so an
export writes the same keys back and DataComp uids stay the uids.

Resumable: tars are taken in commits of `export.import_shards_per_commit`; `images` is
written before `candidates`, and a tar whose samples are in `candidates` (source_file) is
not read again. Taken-down samples (URL, domain, sample_id, sha256, md5) are not imported.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from typing import Any

import pyarrow as pa
from pyspark.sql import functions as F
from pyspark.sql import types as T

from laion_spark.config import Config
from laion_spark.export.pool import PoolSample, list_shards, read_tar, sibling_parquet
from laion_spark.stage import StageResult
from laion_spark.tables import Tables, arrow_schema, spark_schema
from laion_spark.takedown.rules import TakedownRules, is_taken_down, load_rules

log = logging.getLogger(__name__)

CANDIDATE_COLUMNS = [
    "sample_id",
    "url",
    "text",
    "language",
    "license",
    "source_file",
    "source_offset",
    "original_id",
    "original_width",
    "original_height",
    "source_format",
    "original_meta",
]
IMAGE_COLUMNS = [
    "sample_id",
    "url",
    "status",
    "error_message",
    "image",
    "width",
    "height",
    "original_width",
    "original_height",
    "sha256",
    "format",
    "num_bytes",
]
_SHARED = set(CANDIDATE_COLUMNS) & set(IMAGE_COLUMNS)
# a task's rows: candidate columns, image columns, and why a sample is not imported
# (null = imported): no_url, taken_down, bad_shard
SPARK_SCHEMA = T.StructType(
    [
        *spark_schema("candidates", CANDIDATE_COLUMNS).fields,
        *[f for f in spark_schema("images", IMAGE_COLUMNS).fields if f.name not in _SHARED],
        T.StructField("problem", T.StringType()),
    ]
)
ROW_SCHEMA = pa.schema(
    [
        *arrow_schema("candidates", CANDIDATE_COLUMNS),
        *[f for f in arrow_schema("images", IMAGE_COLUMNS) if f.name not in _SHARED],
        ("problem", pa.string()),
    ]
)
# json fields that have their own column; the rest go to original_meta as strings
_KNOWN = {"url", "caption", "key", "uid", "width", "height", "original_width", "original_height"}
_KNOWN |= {"status", "error_message", "sha256", "language", "license", "LANGUAGE", "LICENSE"}


def _int(v: Any) -> int | None:
    try:
        return int(v) if v is not None and v != "" else None
    except (TypeError, ValueError):
        return None


def _image_size(data: bytes) -> tuple[int | None, int | None]:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:  # header only, no pixel decode
            return im.size
    except Exception:
        return None, None


def sample_row(
    tar_path: str, sample: PoolSample, listed: dict[str, Any] | None, rules: TakedownRules
) -> dict[str, Any]:
    """One pool sample -> one output row (candidate + image columns + problem)."""
    from laion_spark.ids import sample_id

    meta = {**(listed or {}), **sample.meta()}
    url = (meta.get("url") or "").strip() or None
    caption = sample.caption()
    if caption is None:
        caption = meta.get("caption")
    ext, image = sample.image()
    uid = meta.get("uid")
    shard = tar_path.rstrip("/").rsplit("/", 1)[-1][: -len(".tar")]
    extra = {k: str(v) for k, v in meta.items() if k not in _KNOWN and v is not None}
    row: dict[str, Any] = {
        "url": url,
        "text": caption,
        "language": meta.get("language") or meta.get("LANGUAGE"),
        "license": meta.get("license") or meta.get("LICENSE"),
        "source_file": tar_path,
        "source_offset": sample.index,
        "original_id": str(uid) if uid else sample.key,
        "original_width": _int(meta.get("original_width")),
        "original_height": _int(meta.get("original_height")),
        "source_format": "webdataset",
        "original_meta": {**extra, "key": sample.key, "shard": shard},
        "problem": None,
    }
    if not url:
        row["problem"] = "no_url"
        return row
    row["sample_id"] = sid = sample_id(url, caption)
    if image is not None:
        width, height = _int(meta.get("width")), _int(meta.get("height"))
        if width is None or height is None:
            width, height = _image_size(image)
        digest = hashlib.sha256(image).hexdigest()
        row.update(
            status="success",
            image=image,
            width=width,
            height=height,
            sha256=digest,
            format="jpg" if ext == "jpeg" else ext,
            num_bytes=len(image),
        )
        if digest in rules.sha256 or (rules.md5 and hashlib.md5(image).hexdigest() in rules.md5):
            row["problem"] = "taken_down"
    else:
        status = meta.get("status")
        row["status"] = status if status and status != "success" else "missing_image"
        row["error_message"] = meta.get("error_message") or (
            None if status and status != "success" else f"no image member for key {sample.key}"
        )
        if sample.skipped:
            row["status"], row["error_message"] = "too_large", "; ".join(sample.skipped)[:500]
    if is_taken_down(rules, url, sid):
        row["problem"] = "taken_down"
    return row


def read_shard(tar_path: str, rules: TakedownRules, max_member_bytes: int) -> list[dict]:
    """Every sample of one tar plus the failures only its parquet lists."""
    read = read_tar(tar_path, max_member_bytes)
    listed = {str(r.get("key")): r for r in sibling_parquet(tar_path) if r.get("key") is not None}
    rows = []
    for sample in read.samples:
        rows.append(sample_row(tar_path, sample, listed.pop(sample.key, None), rules))
    # samples img2dataset tried but did not store (failed downloads): rows with their status
    for key, meta in listed.items():
        sample = PoolSample(key, len(rows))
        rows.append(sample_row(tar_path, sample, meta, rules))
    if read.error:
        rows.append({"source_file": tar_path, "problem": "bad_shard", "error_message": read.error})
    return rows


def import_webdataset(spark, cfg: Config, tables: Tables, path: str) -> StageResult:
    """MERGE the samples of the pool at `path` into `candidates` and `images` (new keys only)."""
    t0 = time.time()
    ex = cfg.export
    shards = list_shards(path)
    if not shards:
        return StageResult("import", error=f"no .tar shards under {path}")
    done: set[str] = set()
    if tables.exists("candidates"):
        done = {
            r[0]
            for r in tables.read("candidates")
            .where(F.col("source_file").isin(*shards))
            .select("source_file")
            .distinct()
            .collect()
        }
    todo = [s for s in shards if s not in done]
    rules = load_rules(tables)
    max_bytes = ex.max_member_bytes
    by_status: dict[str, int] = {}
    errors: list[str] = []
    rows_in = inserted = 0

    def fn(batches):
        for batch in batches:
            for path_ in batch.column("path").to_pylist():
                rows = read_shard(path_, rules, max_bytes)
                if rows:
                    yield pa.RecordBatch.from_pylist(rows, schema=ROW_SCHEMA)

    schema = "path string"
    for i in range(0, len(todo), ex.import_shards_per_commit):
        chunk = todo[i : i + ex.import_shards_per_commit]
        paths = spark.createDataFrame([(p,) for p in chunk], schema).repartition(len(chunk))
        out = paths.mapInArrow(fn, SPARK_SCHEMA).localCheckpoint(eager=True)
        for r in out.groupBy("problem", "status").count().collect():
            k = r["problem"] or r["status"] or "unknown"
            by_status[k] = by_status.get(k, 0) + int(r["count"])
        errors += [
            r[0] for r in out.where("problem = 'bad_shard'").select("error_message").collect()
        ]
        good = out.where(F.col("problem").isNull())
        rows_in += good.count()
        now = F.current_timestamp()
        images = good.select(*IMAGE_COLUMNS).withColumn("downloaded_at", now)
        tables.upsert(images, "images", update=False)  # images first: see the module docstring
        cands = good.select(*CANDIDATE_COLUMNS).withColumn("extracted_at", now)
        inserted += tables.upsert(cands, "candidates", update=False)["num_inserted_rows"]
    if errors:
        log.warning(
            "import %s: %d shard(s) could not be read to the end: %s", path, len(errors), errors[0]
        )
    return StageResult(
        "import",
        rows_in=rows_in,
        rows_out=inserted,
        by_status=by_status,
        seconds=time.time() - t0,
        notes={
            "flavor": "webdataset",
            "shards": len(shards),
            "shards_read": len(todo),
            "shards_already_imported": len(done),
            "bad_shards": len(errors),
        },
        error="no shard could be read"
        if todo and len(errors) == len(todo) and not rows_in
        else None,
    )

"""The CLIP-DPO input pool `sft_pool`: (image, instruction) rows, from two sources.

- LLaVA-style SFT JSON (`[{"id", "image", "conversations": [{"from": "human", "value":
  "<image>\\n..."}, {"from": "gpt", "value": "..."}]}]`) plus the folder or URI its image
  paths are relative to (`import_sft`);
- our own downloaded images with their captions as the reference answer
  (`pool_from_images`, run by dpo_generate when `dpo.pool.from_images` is on).

Every row is keyed by `pool_id` = sha256(source, original id, image ref, instruction)[:32 hex],
so re-importing the same file adds nothing. Image bytes are copied into the table (bounded in
size and pixels): the generation and scoring tasks then need no access to the image folder.
Records that cannot be used are rows with a status and a message, never silently dropped
(text-only records, which CLIP-DPO cannot use, are counted in the summary).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import posixpath
import time
from typing import Any

from laion_spark import storage
from laion_spark.stage import StageResult

log = logging.getLogger(__name__)

OK = "ok"
MISSING_IMAGE = "missing_image"  # the image file is not there (or unreadable)
BAD_IMAGE = "bad_image"  # the bytes do not decode as an image, or too many pixels
TOO_LARGE = "too_large"  # more bytes than dpo.pool.max_image_bytes
BAD_RECORD = "bad_record"  # the record is malformed (message says how)
# statuses a re-import does not retry (a missing image may appear later; a bad record never)
FINAL = (OK, BAD_RECORD)

_HUMAN = ("human", "user")
_ASSISTANT = ("gpt", "assistant")
_IMAGE_TAG = "<image>"

# the sft_pool columns the importer writes (dpo_score fills the text_* columns later)
RECORD_COLUMNS = [
    "pool_id",
    "source",
    "original_id",
    "sample_id",
    "image_ref",
    "instruction",
    "reference",
    "conversations",
    "status",
    "error_message",
]


def pool_id(
    source: str, original_id: str | None, image_ref: str | None, instruction: str | None
) -> str:
    """The stable key of a pool row (the Spark expression `pool_id_column` computes the same)."""
    text = "\t".join([source, original_id or "", image_ref or "", instruction or ""])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def pool_id_column(source, original_id, image_ref, instruction):
    """`pool_id` as a Spark Column over column expressions (same bytes, same hash)."""
    from pyspark.sql import functions as F

    parts = [F.coalesce(c, F.lit("")) for c in (source, original_id, image_ref, instruction)]
    return F.substring(F.sha2(F.concat_ws("\t", *parts), 256), 1, 32)


def _turns(conversations: Any) -> tuple[str | None, str | None, str | None]:
    """(instruction, reference, error) from a LLaVA conversations list."""
    if not isinstance(conversations, list) or not conversations:
        return None, None, "conversations must be a non-empty list of {from, value} turns"
    instruction = reference = None
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            return None, None, f"conversations[{i}] must be an object with a string value"
        who = str(turn.get("from", "")).lower()
        if instruction is None and who in _HUMAN:
            instruction = " ".join(turn["value"].replace(_IMAGE_TAG, " ").split())
        elif instruction is not None and reference is None and who in _ASSISTANT:
            reference = turn["value"].strip()
    if not instruction:
        return None, None, "no human turn with an instruction"
    return instruction, reference, None


def _safe_ref(ref: str) -> str | None:
    """The image path relative to the image folder, or None when it leaves that folder."""
    if "://" in ref or ref.startswith("dbfs:"):
        return ref
    norm = posixpath.normpath(ref.replace("\\", "/"))
    if norm.startswith("../") or norm == ".." or norm.startswith("/"):
        return None
    return norm


def parse_records(records: Any, source: str = "llava_json") -> tuple[list[dict], dict[str, int]]:
    """Pool rows (without image bytes) from a parsed LLaVA-style JSON list, and counts.

    Text-only records (no "image") are counted as `text_only` and not returned: CLIP-DPO
    ranks responses by their agreement with an image.
    """
    if not isinstance(records, list):
        raise ValueError("an SFT file must hold a JSON list of records")
    rows: list[dict] = []
    skipped = {"text_only": 0}
    for index, rec in enumerate(records):
        row = dict.fromkeys(RECORD_COLUMNS)
        row["source"] = source
        if not isinstance(rec, dict):
            row.update(
                original_id=f"#{index}",
                status=BAD_RECORD,
                error_message=f"record {index} is a {type(rec).__name__}, not an object",
            )
            row["pool_id"] = pool_id(source, row["original_id"], None, None)
            rows.append(row)
            continue
        if rec.get("image") in (None, ""):
            skipped["text_only"] += 1
            continue
        original = str(rec["id"]) if rec.get("id") not in (None, "") else f"#{index}"
        image = rec["image"]
        instruction, reference, error = _turns(rec.get("conversations"))
        ref = image if isinstance(image, str) else None
        if ref is None:
            error = error or "image must be one path (records with several images are not used)"
        elif _safe_ref(ref) is None:
            error = error or f"image path {ref!r} leaves the image folder"
        row.update(
            original_id=original,
            image_ref=ref if isinstance(ref, str) else json.dumps(image)[:500],
            instruction=instruction,
            reference=reference,
            conversations=json.dumps(rec.get("conversations"), ensure_ascii=False),
            status=BAD_RECORD if error else None,
            error_message=error,
        )
        row["pool_id"] = pool_id(source, original, row["image_ref"], instruction)
        rows.append(row)
    return rows, skipped


def check_image(
    data: bytes, max_bytes: int, max_pixels: int = 64_000_000
) -> tuple[str, str | None]:
    """(status, error) for encoded image bytes: ok when they decode within the bounds."""
    from PIL import Image

    if len(data) > max_bytes:
        return TOO_LARGE, f"{len(data)} bytes is more than dpo.pool.max_image_bytes={max_bytes}"
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                return BAD_IMAGE, f"image too large: {w}x{h} pixels"
            im.verify()
    except Exception as e:  # PIL raises many types for corrupt data
        return BAD_IMAGE, f"cannot decode image: {type(e).__name__}: {e}"
    return OK, None


def _load_images(image_root: str | None, max_bytes: int):
    """mapInArrow function: read each row's image under `image_root`, check it, hash it."""

    def fn(batches):
        import pyarrow as pa

        from laion_spark.tables import arrow_schema

        schema = arrow_schema("sft_pool", [*RECORD_COLUMNS, "image", "image_sha256"])
        for rb in batches:
            rows = rb.to_pylist()
            images: list[bytes | None] = []
            hashes: list[str | None] = []
            for row in rows:
                data = None
                if row["status"] is None:
                    ref = _safe_ref(row["image_ref"])
                    path = ref if "://" in ref or not image_root else storage.join(image_root, ref)
                    try:
                        if storage.size(path) > max_bytes:
                            row["status"], row["error_message"] = (
                                TOO_LARGE,
                                (f"{path} is larger than dpo.pool.max_image_bytes={max_bytes}"),
                            )
                        else:
                            data = storage.read_bytes(path)
                            row["status"], row["error_message"] = check_image(data, max_bytes)
                    except (OSError, ValueError) as e:
                        row["status"] = MISSING_IMAGE
                        row["error_message"] = f"cannot read {path}: {type(e).__name__}: {e}"
                    if row["status"] != OK:
                        data = None
                images.append(data)
                hashes.append(hashlib.sha256(data).hexdigest() if data else None)
            cols = [pa.array([r[c] for r in rows], pa.string()) for c in RECORD_COLUMNS]
            yield pa.RecordBatch.from_arrays(
                [*cols, pa.array(images, pa.binary()), pa.array(hashes, pa.string())],
                schema=schema,
            )

    return fn


def import_sft(spark, cfg, tables, path: str, image_root: str | None = None) -> StageResult:
    """Import a LLaVA-style SFT JSON file into `sft_pool` (incremental: known rows are kept).

    `image_root` is the folder or URI the records' "image" paths are relative to (default:
    the JSON file's folder). Rows whose image was missing are retried on a re-import.
    """
    from pyspark.sql import functions as F

    from laion_spark.tables import spark_schema

    t0 = time.time()
    pool_cfg = cfg.dpo.pool
    if storage.size(path) > pool_cfg.max_json_bytes:
        raise ValueError(f"{path} is larger than dpo.pool.max_json_bytes={pool_cfg.max_json_bytes}")
    try:
        records = json.loads(storage.read_bytes(path))
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    rows, skipped = parse_records(records)
    root = image_root if image_root is not None else path.rstrip("/").rsplit("/", 1)[0]
    if not rows:
        return StageResult("dpo_import_sft", len(records), 0, skipped, time.time() - t0)
    df = spark.createDataFrame(rows, spark_schema("sft_pool", RECORD_COLUMNS))
    done = F.col("status").isin(*FINAL)
    todo = tables.pending(df, "sft_pool", keys=("pool_id",), where=done).dropDuplicates(["pool_id"])
    par = max(1, min(spark.sparkContext.defaultParallelism * 4, len(rows) // 64 + 1))
    loaded = todo.repartition(par).mapInArrow(
        _load_images(root, pool_cfg.max_image_bytes),
        spark_schema("sft_pool", [*RECORD_COLUMNS, "image", "image_sha256"]),
    )
    out = loaded.withColumn("imported_at", F.current_timestamp())
    metrics = tables.upsert(out, "sft_pool", dedup=False)
    by_status = {
        r["status"]: int(r["count"])
        for r in tables.read("sft_pool").groupBy("status").count().collect()
    }
    return StageResult(
        "dpo_import_sft",
        rows_in=len(records),
        rows_out=metrics["num_inserted_rows"] + metrics["num_updated_rows"],
        by_status={**by_status, **{k: v for k, v in skipped.items() if v}},
        seconds=time.time() - t0,
        notes={"image_root": root, "pool_rows": sum(by_status.values())},
    )


def pool_from_images(spark, cfg, tables) -> dict[str, int]:
    """Add our successfully downloaded images (caption = reference) to `sft_pool`.

    Insert-only by pool_id; `dpo.pool.images_fraction` keeps a share chosen by a hash of
    sample_id (the same images every run). Taken-down samples never enter.
    """
    from pyspark.sql import functions as F

    from laion_spark.takedown.rules import exclude_taken_down

    pool_cfg = cfg.dpo.pool
    if not (tables.exists("images") and tables.exists("candidates")):
        return {"num_inserted_rows": 0}
    imgs = tables.read("images").where(F.col("status") == "success")
    imgs = imgs.select("sample_id", "url", "image", F.col("sha256").alias("image_sha256"))
    if pool_cfg.images_fraction < 1:
        # sample_id is hex: its first 8 digits are a uniform, engine-independent hash
        bucket = F.conv(F.substring("sample_id", 1, 8), 16, 10).cast("long") % 10000
        imgs = imgs.where(bucket < int(round(pool_cfg.images_fraction * 10000)))
    caps = tables.read("candidates").select("sample_id", F.col("text").alias("reference"))
    df = exclude_taken_down(tables, imgs.join(caps, "sample_id", "left"))
    instruction = F.lit(pool_cfg.instruction)
    src = F.lit("images")
    out = df.select(
        pool_id_column(src, F.col("sample_id"), F.col("url"), instruction).alias("pool_id"),
        src.alias("source"),
        F.col("sample_id").alias("original_id"),
        "sample_id",
        F.col("url").alias("image_ref"),
        "image",
        F.coalesce("image_sha256", F.sha2("image", 256)).alias("image_sha256"),
        instruction.alias("instruction"),
        "reference",
        F.lit(None).cast("string").alias("conversations"),
        F.lit(OK).alias("status"),
        F.lit(None).cast("string").alias("error_message"),
        F.current_timestamp().alias("imported_at"),
    )
    todo = tables.pending(out, "sft_pool", keys=("pool_id",))
    # a MERGE of no rows still costs its jobs (seconds in every re-run): probe the keys first
    if not todo.select("pool_id").limit(1).collect():
        return {"num_inserted_rows": 0}
    return tables.upsert(todo, "sft_pool", update=False, dedup=False)

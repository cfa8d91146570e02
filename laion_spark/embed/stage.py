"""EMBED stage: CLIP image + text embeddings for every downloaded image -> `embeddings`.

    images(status=success) ⋈ candidates(text, language group)
        ─anti-join embeddings(model_id, text_model_id)─▶  mapInArrow
        ─▶ embeddings(sample_id, model_id, text_model_id, image_embedding, text_embedding,
                      similarity, status)

Captions are routed by language group (models/text_tower.py): a group with a multilingual
text tower configured (`embed.text_towers`) gets its text embedding and similarity from that
tower, every other caption from the CLIP model's own text tower; one image embedding per
sample either way. `text_model_id` records which text tower made the row.

Why `mapInArrow`: the model loads once per Python worker (module-level cache, Spark reuses
workers), each task streams Arrow record batches in and out (no partition is materialised),
and the image bytes reach Python as one Arrow binary buffer without a pandas object column
(see docs/embed.md for the comparison with an iterator pandas UDF).

Inside a task: rows are cut into model batches of `embed.batch_size`; JPEG decode +
preprocess of the NEXT batch runs on a small thread pool (PIL releases the GIL while
decoding/resizing) while the model computes the current one. On a GPU executor the task
uses the GPU Spark assigned it (TaskContext.resources()["gpu"]), fp16/bf16 autocast and
pinned-memory host->device copies; on CPU it uses the task's cores (spark.task.cpus).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC
from typing import Any

import numpy as np

from laion_spark.embed.pending import pending_by_route_local
from laion_spark.embed.settings import EmbedSettings
from laion_spark.models.clip import ImageDecodeError, LoadedClip, load_clip
from laion_spark.models.device import set_torch_threads
from laion_spark.models.text_tower import (
    TextTower,
    encode_routed,
    load_text_towers,
    route_column,
    tower_paths,
)
from laion_spark.session import ARROW_BATCH_BYTES, ARROW_BATCH_ROWS, session_conf
from laion_spark.stage import StageResult
from laion_spark.tables import SPECS, arrow_schema, spark_schema

SUCCESS = "success"
FAILED_DECODE = "failed_to_decode"  # bytes are not a decodable image (or too many pixels)
FAILED_EMBED = "failed_to_embed"  # the model failed on a batch (retried on the next run)
# statuses that count as "done" for the anti-join; failed_to_embed rows are retried
FINAL_STATUSES = (SUCCESS, FAILED_DECODE)


# what the task yields: the embeddings columns but the commit time, added after the UDF
OUT_COLUMNS = [f.name for f in SPECS["embeddings"].schema.fields if f.name != "embedded_at"]
SPARK_OUT_SCHEMA = spark_schema("embeddings", OUT_COLUMNS)


@functools.cache
def _arrow_out():
    return arrow_schema("embeddings", OUT_COLUMNS)


def _list_array(rows: np.ndarray, valid: np.ndarray):
    """(n, d) float32 + validity mask -> Arrow list<float> without per-row Python objects."""
    import pyarrow as pa

    n, d = rows.shape
    offsets = np.arange(n + 1, dtype=np.int32) * d
    arr = pa.ListArray.from_arrays(pa.array(offsets), pa.array(rows.reshape(-1)))
    if valid.all():
        return arr
    # rebuild with nulls where invalid (rare path: undecodable images)
    mask = pa.array(~valid)
    return pa.ListArray.from_arrays(pa.array(offsets), arr.values, mask=mask)


class BatchEmbedder:
    """Streams (sample_id, image bytes, text, route) chunks through the models, decode
    overlapped; each caption's text through its route's tower (`towers`, may be empty)."""

    def __init__(
        self, clip: LoadedClip, clip_cfg: EmbedSettings, towers: dict[str, TextTower] | None = None
    ):
        self.clip = clip
        self.cfg = clip_cfg
        self.towers = towers or {}
        self.pool = ThreadPoolExecutor(max(1, clip_cfg.decode_threads), "clip-decode")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _decode_part(self, images: list[bytes | None]) -> list[Any]:
        if self.cfg.decode == "device":
            from laion_spark.models.device_decode import decode_on_device

            return decode_on_device(self.clip, images)
        out: list[Any] = []
        for b in images:
            try:
                out.append(self.clip.decode(b or b""))
            except ImageDecodeError as e:
                out.append(e)
        return out

    def _submit(self, images: list[bytes | None]) -> list[Future]:
        k = max(1, self.cfg.decode_threads)
        step = max(1, -(-len(images) // k))
        return [
            self.pool.submit(self._decode_part, images[i : i + step])
            for i in range(0, len(images), step)
        ]

    def _finish(
        self,
        ids: list[str],
        texts: list[str | None],
        routes: list[str | None],
        parts: list[Future],
    ):
        import pyarrow as pa
        import torch

        decoded = [x for f in parts for x in f.result()]
        n = len(ids)
        ok = np.array([not isinstance(x, Exception) for x in decoded], dtype=bool)
        status = np.where(ok, SUCCESS, FAILED_DECODE).astype(object)
        errors: list[str | None] = [
            None if o else str(x) for o, x in zip(ok, decoded, strict=False)
        ]
        dim = self.clip.dim
        img = np.zeros((n, dim), np.float32)
        txt = np.zeros((n, dim), np.float32)
        txt_ok = np.ones(n, dtype=bool)
        text_ids = [self.clip.model_id] * n
        try:
            if ok.any():
                batch = torch.stack([x for x, o in zip(decoded, ok, strict=False) if o])
                if self.clip.device.startswith("cuda") and not batch.is_cuda:
                    batch = batch.pin_memory()  # async host->device copy
                img[ok] = self.clip.encode_image_tensor(batch)
            txt[:], text_ids = encode_routed(self.clip, self.towers, texts, routes)
        except Exception as e:  # a model failure marks the batch, the job goes on
            msg = f"{type(e).__name__}: {e}"[:1000]
            status[ok] = FAILED_EMBED
            errors = [msg if o else err for o, err in zip(ok, errors, strict=False)]
            ok = np.zeros(n, dtype=bool)
            txt_ok = np.zeros(n, dtype=bool)
        sim = np.einsum("ij,ij->i", img, txt).astype(np.float32)
        return pa.RecordBatch.from_arrays(
            [
                pa.array(ids, pa.string()),
                pa.array([self.clip.model_id] * n, pa.string()),
                pa.array(text_ids, pa.string()),
                _list_array(img, ok),
                _list_array(txt, txt_ok),
                pa.array(sim, pa.float32(), mask=~ok),
                pa.array(status.tolist(), pa.string()),
                pa.array(errors, pa.string()),
            ],
            schema=_arrow_out(),
        )

    def run(self, batches: Iterator[Any]) -> Iterator[Any]:
        """Arrow batches of (sample_id, image, text, route) -> Arrow batches of embeddings."""
        bs = self.cfg.batch_size
        inflight: deque = deque()

        def chunks():
            """Model batches of `bs` rows across Arrow batches (cut by rows and bytes):
            only a model batch's image bytes become Python objects at a time."""
            buf: list[list] = [[], [], [], []]
            for rb in batches:
                route = "route" in rb.schema.names
                i = 0
                while i < rb.num_rows:
                    part = rb.slice(i, min(bs - len(buf[0]), rb.num_rows - i))
                    i += part.num_rows
                    buf[0] += part.column("sample_id").to_pylist()
                    buf[1] += part.column("image").to_pylist()
                    buf[2] += part.column("text").to_pylist()
                    buf[3] += part.column("route").to_pylist() if route else [None] * len(part)
                    if len(buf[0]) >= bs:
                        yield tuple(buf)
                        buf = [[], [], [], []]
            if buf[0]:
                yield tuple(buf)

        for ids, imgs, texts, routes in chunks():
            inflight.append((ids, texts, routes, self._submit(imgs)))
            if len(inflight) > 1:  # decode of this chunk runs while the previous one computes
                yield self._finish(*inflight.popleft())
        while inflight:
            yield self._finish(*inflight.popleft())


def _embed_partition(conf: dict, model_id: str, tower_ids: dict[str, str] | None = None):
    """mapInArrow function; `conf` is the EmbedSettings as a dict (pretrained path and tower
    directories resolved on the driver); `tower_ids` the text tower ids the driver loaded."""

    def fn(batches):
        clip_cfg = EmbedSettings(**conf)
        clip = load_clip(clip_cfg)  # cached per Python worker process
        if clip.model_id != model_id:
            raise RuntimeError(
                f"executor loaded {clip.model_id}, driver expected {model_id}: "
                "point embed.pretrained at the same weights on every node"
            )
        towers = load_text_towers(clip_cfg, clip, paths=clip_cfg.text_towers)
        for group, tower in towers.items():
            want = (tower_ids or {}).get(group)
            if tower.model_id != want:
                raise RuntimeError(
                    f"executor loaded text tower {tower.model_id} for {group}, driver expected "
                    f"{want}: point embed.text_towers.{group} at the same weights on every node"
                )
        set_torch_threads(clip_cfg.cpu_threads, clip.device)
        emb = BatchEmbedder(clip, clip_cfg, towers)
        try:
            yield from emb.run(batches)
        finally:
            emb.close()

    return fn


def worker_config(clip_cfg: EmbedSettings, clip: LoadedClip | None = None) -> dict:
    """Config to ship to executors: tiny-clip's checkpoint path and the text towers'
    directories (tiny-mclip trained, hub ids fetched) resolved on the driver."""
    from laion_spark.models import tiny_clip as tiny

    conf = dataclasses.asdict(clip_cfg)
    if clip_cfg.model == tiny.TINY_NAME and not clip_cfg.pretrained:
        conf["pretrained"] = tiny.ensure_tiny_clip()
    if clip_cfg.text_towers:
        conf["text_towers"] = tower_paths(clip_cfg, clip)
    return conf


def source_rows(tables, english: list[str] | tuple[str, ...] = ("en",)) -> Any:
    """images with status success, with their caption (candidates.text) and the language
    group whose text tower embeds it (`route`, models.text_tower.route_column), minus
    takedowns."""
    from laion_spark.takedown.rules import exclude_taken_down

    imgs = tables.read("images").where("status = 'success'").select("sample_id", "url", "image")
    cands = tables.read("candidates")
    route = route_column(cands.columns, list(english)).alias("route")
    df = imgs.join(cands.select("sample_id", "text", route), "sample_id", "left")
    df = exclude_taken_down(tables, df)
    return df.select("sample_id", "image", "text", "route")


def expected_text_model(clip: LoadedClip, tower_ids: dict[str, str]) -> Any:
    """Column: the text model id a row of each route should carry under this config."""
    from pyspark.sql import functions as F

    want = F.lit(clip.model_id)
    for group, tid in sorted(tower_ids.items()):
        want = F.when(F.col("route") == group, F.lit(tid)).otherwise(want)
    return want


def pending_rows(tables, source: Any, model_id: str, want: Any) -> Any:
    """Source rows without a final row of this image model made by the text model their
    route now wants. Rows from before text_model_id existed (null) were made by the CLIP
    model's own text tower. So adding (or changing, or removing) a group's tower makes that
    group's rows pending, and only those; with no tower, exactly the rows of before."""
    from pyspark.sql import functions as F

    emb = tables.read("embeddings")
    text_model = (
        F.coalesce(F.col("text_model_id"), F.col("model_id"))
        if "text_model_id" in emb.columns
        else F.col("model_id")
    )
    done = (
        emb.where((F.col("model_id") == F.lit(model_id)) & F.col("status").isin(*FINAL_STATUSES))
        .select(F.col("sample_id").alias("_done_id"), text_model.alias("_done_text_model"))
        .distinct()
    )
    src = source.withColumn("_want_text_model", want)
    cond = (F.col("sample_id") == F.col("_done_id")) & (
        F.col("_want_text_model") == F.col("_done_text_model")
    )
    return src.join(done, cond, "left_anti").drop("_want_text_model")


def _has_rows_to_redo(tables, pending: Any, model_id: str, towers: bool) -> bool:
    from pyspark.sql import functions as F

    if not towers and tables.local("embeddings"):
        return _has_rows_to_redo_local(tables, model_id)
    emb = tables.read("embeddings").where(F.col("model_id") == F.lit(model_id))
    if towers:  # a group's rows may be another text model's: only a per-sample look tells
        have = emb.select("sample_id")
        return bool(
            pending.select("sample_id").join(have, "sample_id", "left_semi").limit(1).count()
        )
    # one text tower: a row to redo has a non-final status or another (removed) tower's text
    text_model = (
        F.coalesce(F.col("text_model_id"), F.col("model_id"))
        if "text_model_id" in emb.columns
        else F.col("model_id")
    )
    status = F.col("status")
    again = ~status.isin(*FINAL_STATUSES) | status.isNull() | (text_model != F.lit(model_id))
    return bool(emb.where(again).limit(1).count())


def _has_rows_to_redo_local(tables, model_id: str) -> bool:
    """`_has_rows_to_redo` with one text tower, read by delta-rs (a Spark job cost 0.3 s)."""
    from deltalake.exceptions import TableNotFoundError

    from laion_spark.lake import column_values, read_rows

    try:
        got = read_rows(
            tables.location("embeddings"),
            ["status", "text_model_id"],
            equals=("model_id", model_id),
        )
    except TableNotFoundError:
        return False
    for status, text in zip(
        got.column("status").to_pylist(), column_values(got, "text_model_id"), strict=True
    ):
        if status not in FINAL_STATUSES or (text is not None and text != model_id):
            return True
    return False


def _status_counts(tables, model_id: str, started) -> dict[str, int]:
    """Rows of this model written since `started` (the MERGE's current_timestamp), by
    status; local tables are read by delta-rs (a Spark job cost 0.75 s at 20,000 rows)."""
    from pyspark.sql import functions as F

    if tables.local("embeddings"):
        from collections import Counter

        import pyarrow as pa
        import pyarrow.compute as pc

        from laion_spark.lake import read_rows

        got = read_rows(
            tables.location("embeddings"), ["status", "embedded_at"], equals=("model_id", model_id)
        )
        # PySpark hands a timestamp over as a naive datetime in this process's local time
        since = pa.scalar(started.astimezone(UTC), got.schema.field("embedded_at").type)
        recent = got.filter(pc.greater_equal(got.column("embedded_at"), since))
        return dict(Counter(recent.column("status").to_pylist()))
    counts = (
        tables.read("embeddings")
        .where(F.col("model_id") == model_id)
        .where(F.col("embedded_at") >= F.lit(started))
        .groupBy("status")
        .count()
        .collect()
    )
    return {r["status"]: int(r["count"]) for r in counts}


def run(spark, cfg, tables, limit: int | None = None) -> StageResult:
    """Embed every successfully downloaded image not yet embedded with this model."""
    from pyspark.sql import functions as F

    t0 = time.time()
    clip_cfg: EmbedSettings = cfg.embed
    clip = load_clip(clip_cfg)  # driver: model id, dim, tiny-clip trained/cached once
    mid = clip.model_id
    conf = worker_config(clip_cfg, clip)  # tiny-mclip distilled/cached once here too
    towers = load_text_towers(clip_cfg, clip, paths=conf["text_towers"])
    tower_ids = {g: t.model_id for g, t in towers.items()}
    tower_notes = {f"text_model_{g}": tid for g, tid in sorted(tower_ids.items())}
    # the pending rows of each route (what the summary reports per group): on local tables
    # counted here before any Spark call, so a run with nothing to do starts no JVM
    by_route = None
    if not limit:
        by_route = pending_by_route_local(
            tables,
            cfg.extract.english_codes,
            mid,
            tower_ids,
            FINAL_STATUSES,
            clip_cfg.local_count_max_rows,
        )
    if by_route == {}:
        return StageResult("embed", 0, 0, {}, time.time() - t0, {"model_id": mid, **tower_notes})
    source = source_rows(tables, cfg.extract.english_codes)
    pending = pending_rows(tables, source, mid, expected_text_model(clip, tower_ids))
    todo = pending.limit(int(limit)) if limit else pending
    if by_route is None:  # one Spark pass over the pending rows
        by_route = {
            (r["route"] or "none"): int(r["count"]) for r in todo.groupBy("route").count().collect()
        }
    rows_in = sum(by_route.values())
    if rows_in == 0:
        return StageResult("embed", 0, 0, {}, time.time() - t0, {"model_id": mid, **tower_notes})
    # spread the work over every core/executor even when the input is one small Delta file
    par = spark.sparkContext.defaultParallelism
    if todo.rdd.getNumPartitions() < par:
        todo = todo.repartition(par)
    started = spark.sql("SELECT current_timestamp() AS t").collect()[0]["t"]
    out = todo.mapInArrow(_embed_partition(conf, mid, tower_ids), SPARK_OUT_SCHEMA).withColumn(
        "embedded_at", F.current_timestamp()
    )
    # pending rows that already have a row of this model (a non-final status, or made by
    # a text tower the config no longer routes them to) need an updating MERGE; when there
    # are none every pending row is new and an insert-only MERGE (anti-join + append) does
    redo = _has_rows_to_redo(tables, pending, mid, bool(tower_ids))
    # rows per Arrow batch into the task
    arrow = {
        ARROW_BATCH_ROWS: clip_cfg.arrow_batch_size,
        ARROW_BATCH_BYTES: clip_cfg.arrow_batch_mb << 20,
    }
    with session_conf(spark, arrow):
        # images and pending are unique per sample_id, and the UDF maps rows 1:1
        t_write = time.time()
        tables.upsert(out, "embeddings", update=bool(redo), dedup=False)
        write_s = time.time() - t_write
    by_status = _status_counts(tables, mid, started)
    return StageResult(
        "embed",
        rows_in=rows_in,
        rows_out=sum(by_status.values()),
        by_status=by_status,
        seconds=time.time() - t0,
        notes={
            "model_id": mid,
            **tower_notes,
            # pending captions per language group (route): which text tower embedded them
            **{f"rows_{g}": n for g, n in sorted(by_route.items())},
            "device": clip.device,
            "dim": clip.dim,
            # the embedding pass and its Delta commit are one Spark action
            "embed_and_write_s": round(write_s, 1),
            "insert_only": not redo,
        },
    )

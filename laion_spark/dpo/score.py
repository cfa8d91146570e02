"""DPO_SCORE stage: CLIP scores of every response with its image, and text-heavy detection.

    sft_pool(status=ok, not yet checked)  ─mapInArrow─▶  sft_pool(text_detector, text_score, text_heavy)
    dpo_candidates(success, not scored by this ensemble) ⋈ sft_pool(image)
        ─mapInArrow─▶  dpo_candidates(clip_scores, clip_score, score_chunks, scorer_id)

The scorer is one CLIP model or an ensemble (`dpo.score.models`, default the `embed:` model),
each loaded once per Python worker through `models.clip.load_clip`. A response longer than a
model's text context is split into chunks that fit (laion_spark.dpo.text.chunks: sentences,
then word windows) and its score for that model is the mean or the min of its chunks' cosines
(`dpo.score.aggregate`): nothing is truncated. Raw cosines are stored per model
(`clip_scores`); the ensemble's normalisation happens in dpo_select, over the scored pool.

Rows are clustered by pool_id before the Python worker, so each image is decoded and
encoded once per batch, however many responses it has.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from laion_spark.dpo import text as textmod
from laion_spark.stage import StageResult

log = logging.getLogger(__name__)

SCORE_COLUMNS = ["candidate_id", "clip_scores", "clip_score", "score_chunks", "scorer_id"]
TEXT_COLUMNS = ["pool_id", "text_detector", "text_score", "text_heavy"]


def scorer_settings(cfg) -> list:
    """The ensemble's model settings: dpo.score.models, or the embed: model alone."""
    return list(cfg.dpo.score.models) or [cfg.embed]


def scorer_id(model_ids: list[str], aggregate: str) -> str:
    return f"{aggregate}:{'+'.join(model_ids)}"


@dataclass
class Ensemble:
    clips: list[Any]  # LoadedClip, first = the scale normalised scores are put on
    aggregate: str = "mean"

    @property
    def model_ids(self) -> list[str]:
        return [c.model_id for c in self.clips]

    @property
    def scorer_id(self) -> str:
        return scorer_id(self.model_ids, self.aggregate)

    def score(self, images: list[bytes], image_of: list[int], responses: list[str]):
        """Raw cosines (n responses, m models) and the first model's chunk count per response.

        `image_of[i]` indexes `images` for response i. Raises ImageDecodeError for an
        image a model cannot read (the caller scores the others).
        """
        n, m = len(responses), len(self.clips)
        out = np.zeros((n, m), np.float32)
        n_chunks = [1] * n
        for j, clip in enumerate(self.clips):
            img = clip.encode_images(images)
            count, max_tokens = textmod.token_counter(clip.tokenizer)
            pieces: list[str] = []
            owner: list[int] = []
            for i, r in enumerate(responses):
                cs = textmod.chunks(r, count, max_tokens)
                pieces.extend(cs)
                owner.extend([i] * len(cs))
                if j == 0:
                    n_chunks[i] = len(cs)
            bs = max(1, getattr(clip, "batch_size", 256))
            txt = np.concatenate(
                [clip.encode_text(pieces[k : k + bs]) for k in range(0, len(pieces), bs)]
            )
            owner_arr = np.asarray(owner)
            cos = np.einsum("ij,ij->i", img[np.asarray(image_of)[owner_arr]], txt)
            for i in range(n):
                mine = cos[owner_arr == i]
                out[i, j] = mine.min() if self.aggregate == "min" else mine.mean()
        return out, n_chunks


def load_ensemble(confs: list[dict], aggregate: str) -> Ensemble:
    from laion_spark.embed.settings import EmbedSettings
    from laion_spark.models.clip import load_clip

    clips = []
    for conf in confs:
        clip = load_clip(EmbedSettings(**conf))
        clip.batch_size = conf.get("batch_size", 256)  # text batch size for chunks
        clips.append(clip)
    return Ensemble(clips, aggregate)


@functools.cache
def _arrow(table: str, columns: tuple[str, ...]):
    from laion_spark.tables import arrow_schema

    return arrow_schema(table, list(columns))


def score_batch(ens: Ensemble, rows: list[dict]) -> list[dict]:
    """Score rows of (candidate_id, pool_id, image, response); a row whose image no model
    can read comes back with null scores and no scorer_id (retried by the next run)."""
    from laion_spark.models.clip import ImageDecodeError

    index: dict[str, int] = {}
    images: list[bytes] = []
    for r in rows:
        if r["pool_id"] not in index:
            index[r["pool_id"]] = len(images)
            images.append(r["image"])
    try:
        raw, n_chunks = ens.score(
            images, [index[r["pool_id"]] for r in rows], [r["response"] for r in rows]
        )
    except ImageDecodeError:  # rare: score one image at a time to isolate the bad one
        out = []
        for pid in index:
            part = [r for r in rows if r["pool_id"] == pid]
            try:
                raw, n_chunks = ens.score(
                    [part[0]["image"]], [0] * len(part), [r["response"] for r in part]
                )
                out.extend(_score_rows(ens, part, raw, n_chunks))
            except ImageDecodeError as e:
                log.warning("pool image %s not scored: %s", pid, e)
                out.extend(
                    dict.fromkeys(SCORE_COLUMNS) | {"candidate_id": r["candidate_id"]} for r in part
                )
        return out
    return _score_rows(ens, rows, raw, n_chunks)


def _score_rows(
    ens: Ensemble, rows: list[dict], raw: np.ndarray, n_chunks: list[int]
) -> list[dict]:
    ids = ens.model_ids
    return [
        {
            "candidate_id": r["candidate_id"],
            "clip_scores": {mid: float(v) for mid, v in zip(ids, raw[i], strict=True)},
            "clip_score": float(raw[i].mean()),
            "score_chunks": int(n_chunks[i]),
            "scorer_id": ens.scorer_id,
        }
        for i, r in enumerate(rows)
    ]


def _score_partition(confs: list[dict], aggregate: str, expected: str):
    def fn(batches):
        import pyarrow as pa

        from laion_spark.models.device import set_torch_threads

        ens = load_ensemble(confs, aggregate)
        if ens.scorer_id != expected:
            raise RuntimeError(
                f"executor loaded {ens.scorer_id}, driver expected {expected}: point every "
                "dpo.score.models entry at the same weights on every node"
            )
        set_torch_threads(confs[0].get("cpu_threads", 0), ens.clips[0].device)
        schema = _arrow("dpo_candidates", tuple(SCORE_COLUMNS))
        for rb in batches:
            rows = score_batch(ens, rb.to_pylist())
            yield pa.RecordBatch.from_pylist(rows, schema=schema)

    return fn


def detector_id(cfg, ens: Ensemble) -> str | None:
    kind = cfg.dpo.score.text_detector
    if kind == "off":
        return None
    if kind == "zeroshot":
        return f"zeroshot:{ens.model_ids[0]}"
    from laion_spark.dpo.textheavy import STATISTIC_ID

    return STATISTIC_ID


def _text_partition(kind: str, detector: str, threshold: float, clip_conf: dict):
    def fn(batches):
        import io

        import pyarrow as pa
        import torch
        from PIL import Image

        from laion_spark.dpo import textheavy

        clip = load_ensemble([clip_conf], "mean").clips[0] if kind == "zeroshot" else None
        schema = _arrow("sft_pool", tuple(TEXT_COLUMNS))
        for rb in batches:
            ids = rb.column("pool_id").to_pylist()
            scores: list[float | None] = []
            for data in rb.column("image").to_pylist():
                try:
                    if clip is not None:
                        s = textheavy.zero_shot_scores(clip, torch.stack([clip.decode(data)]))[0]
                    else:
                        with Image.open(io.BytesIO(data)) as im:
                            s = textheavy.text_statistic(im)
                    scores.append(float(s))
                except Exception as e:  # an unreadable image is not text-heavy; say so
                    log.warning("text detection failed: %s", e)
                    scores.append(None)
            yield pa.RecordBatch.from_pydict(
                {
                    "pool_id": ids,
                    "text_detector": [detector if s is not None else None for s in scores],
                    "text_score": scores,
                    "text_heavy": [None if s is None else s >= threshold for s in scores],
                },
                schema=schema,
            )

    return fn


def worker_configs(cfg) -> list[dict]:
    from laion_spark.embed.stage import worker_config

    return [worker_config(m) for m in scorer_settings(cfg)]


def detect_text(spark, cfg, tables, ens: Ensemble, confs: list[dict]) -> dict[str, int]:
    """Text-heavy scores for pool images not yet checked by this detector."""
    from pyspark.sql import functions as F

    from laion_spark.tables import spark_schema

    detector = detector_id(cfg, ens)
    if detector is None:
        return {}
    pool = tables.read("sft_pool").where(F.col("status") == "ok")
    todo = pool.where(F.col("text_detector").isNull() | (F.col("text_detector") != detector))
    todo = todo.select("pool_id", "image")
    n = todo.count()
    if n == 0:
        return {"text_checked": 0}
    s = cfg.dpo.score
    par = max(1, min(spark.sparkContext.defaultParallelism, -(-n // s.batch_rows)))
    out = todo.repartition(par).mapInArrow(
        _text_partition(s.text_detector, detector, s.text_threshold, confs[0]),
        spark_schema("sft_pool", TEXT_COLUMNS),
    )
    tables.upsert(out, "sft_pool", dedup=False)
    heavy = (
        tables.read("sft_pool")
        .where((F.col("text_detector") == detector) & F.col("text_heavy"))
        .count()
    )
    return {"text_checked": n, "text_heavy": heavy}


def idle_local(cfg, tables, ens: Ensemble) -> dict[str, int] | None:
    """The notes of a run with nothing to do, when the local tables say so (read with
    delta-rs: no pool image unchecked by the detector, no successful response of a pool
    row unscored by this ensemble); None when there is work, or the tables are not local
    (the Spark path decides). A re-run then starts no JVM: its two probes cost 2 s."""
    from laion_spark.lake import read_rows

    if not (tables.local("sft_pool") and tables.local("dpo_candidates")):
        return None
    if not (tables.exists("sft_pool") and tables.exists("dpo_candidates")):
        return None
    detector = detector_id(cfg, ens)
    pool = read_rows(
        tables.location("sft_pool"), ["pool_id", "text_detector"], equals=("status", "ok")
    )
    if detector is not None and any(
        d != detector for d in pool.column("text_detector").to_pylist()
    ):
        return None
    ok = set(pool.column("pool_id").to_pylist())
    cands = read_rows(
        tables.location("dpo_candidates"), ["pool_id", "scorer_id"], equals=("status", "success")
    )
    sid = ens.scorer_id
    for pid, scorer in zip(
        *(cands.column(c).to_pylist() for c in ("pool_id", "scorer_id")), strict=True
    ):
        if scorer != sid and pid in ok:
            return None
    return {} if detector is None else {"text_checked": 0}


def run(spark, cfg, tables, limit: int | None = None) -> StageResult:
    """Score every successful response not yet scored by this ensemble."""
    from pyspark.sql import functions as F

    from laion_spark.session import ARROW_BATCH_ROWS, session_conf
    from laion_spark.tables import spark_schema

    t0 = time.time()
    s = cfg.dpo.score
    if not tables.exists("dpo_candidates"):
        return StageResult("dpo_score", 0, 0, {}, time.time() - t0, {"candidates": "none yet"})
    confs = worker_configs(cfg)
    ens = load_ensemble(confs, s.aggregate)  # driver: model ids
    sid = ens.scorer_id
    notes: dict[str, Any] = {"scorer_id": sid}
    idle = idle_local(cfg, tables, ens)
    if idle is not None:
        return StageResult("dpo_score", 0, 0, {}, time.time() - t0, {**notes, **idle})
    with session_conf(spark, {ARROW_BATCH_ROWS: s.batch_rows}):
        notes.update(detect_text(spark, cfg, tables, ens, confs))
    cands = tables.read("dpo_candidates").where(F.col("status") == "success")
    cands = cands.where(F.col("scorer_id").isNull() | (F.col("scorer_id") != sid))
    pool = tables.read("sft_pool").where(F.col("status") == "ok").select("pool_id", "image")
    todo = cands.select("candidate_id", "pool_id", "response").join(pool, "pool_id")
    if limit:
        todo = todo.limit(int(limit))
    rows_in = todo.count()
    if rows_in == 0:
        return StageResult("dpo_score", 0, 0, {}, time.time() - t0, notes)
    # no task with less than one Arrow batch: each task loads the ensemble once
    par = max(1, min(spark.sparkContext.defaultParallelism, -(-rows_in // s.batch_rows)))
    # one image's responses together: each image is decoded and encoded once per batch
    todo = todo.repartition(par, "pool_id").sortWithinPartitions("pool_id")
    started = spark.sql("SELECT current_timestamp() AS t").collect()[0]["t"]
    out = todo.mapInArrow(
        _score_partition(confs, s.aggregate, sid), spark_schema("dpo_candidates", SCORE_COLUMNS)
    ).withColumn("scored_at", F.current_timestamp())
    with session_conf(spark, {ARROW_BATCH_ROWS: s.batch_rows}):
        tables.upsert(out, "dpo_candidates", dedup=False)
    done = tables.read("dpo_candidates").where(F.col("scored_at") >= F.lit(started))
    row = done.agg(
        F.count("*").alias("n"),
        F.sum(F.when(F.col("scorer_id") == sid, 1).otherwise(0)).alias("ok"),
        F.sum(F.when(F.col("score_chunks") > 1, 1).otherwise(0)).alias("chunked"),
    ).first()
    scored, failed = int(row["ok"] or 0), int(row["n"]) - int(row["ok"] or 0)
    notes["chunked_responses"] = int(row["chunked"] or 0)
    by_status = {"scored": scored, **({"failed_to_score": failed} if failed else {})}
    return StageResult(
        "dpo_score",
        rows_in=rows_in,
        rows_out=scored,
        by_status=by_status,
        seconds=time.time() - t0,
        notes=notes,
        error=None if scored or not rows_in else "no response could be scored",
    )

"""Score stage: embeddings (one CLIP model) -> `scores`, in one pass over the embeddings.

    result = run(spark, cfg, tables)            # score what is not yet scored
    result = run(spark, cfg, tables, rescore=True)

Reads `embeddings` rows of the model (those with an image embedding and no `scores` row
for that model yet), joins the caption from `candidates` (for toxicity and LAION's child-
word rule) and, only when a watermark image model is configured, the image bytes from
`images`. Each Python worker loads the heads once and scores Arrow batches
(`mapInPandas`); the result is cached so the models run exactly once, then MERGEd.
"""

from __future__ import annotations

import time

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from laion_spark.config import Config
from laion_spark.models.clip import embedding_model_id
from laion_spark.models.device import resolve_device
from laion_spark.models.heads import load_head
from laion_spark.score.scoring import ABSENT, Models, ScorePlan, score_batch
from laion_spark.score.zeroshot import (
    PromptEmbeddings,
    cached_prompts,
    encode_prompts,
    lists_digest,
    load_prompt_lists,
    prompts_dir,
    read_list,
    save_prompts,
)
from laion_spark.session import ARROW_BATCH_ROWS, session_conf
from laion_spark.stage import StageResult
from laion_spark.tables import SPECS, Tables

OUT_SCHEMA = T.StructType(
    [f for f in SPECS["scores"].schema.fields if f.name not in ("scored_at",)]
)


def _prompts(
    cfg: Config, model_id: str, clip, given: PromptEmbeddings | None
) -> tuple[PromptEmbeddings | None, str]:
    """Prompt embeddings in the scored model's space, or (None, why absent)."""
    sc = cfg.score
    if not sc.zero_shot:
        return None, f"{ABSENT}: score.zero_shot=false"
    lists = load_prompt_lists(prompts_dir(sc.prompts_dir))
    ref = f"zero-shot:{model_id}:prompts@{lists_digest(lists)}"
    if given is not None:
        return given, ref
    cached = cached_prompts(ref)
    if cached is not None:
        return cached, ref
    try:
        if clip is None:
            from laion_spark.models.clip import load_clip

            clip = load_clip(cfg.embed)
    except Exception as e:
        return None, f"{ABSENT}: clip model did not load ({type(e).__name__}: {e})"[:300]
    if clip.model_id != model_id:
        # prompts must live in the same embedding space as the images
        return None, f"{ABSENT}: clip {clip.model_id} is not the scored model {model_id}"
    pe = encode_prompts(clip.encode_text, lists)
    save_prompts(ref, pe)
    return pe, ref


def build_plan(
    cfg: Config,
    model_id: str,
    clip=None,
    prompt_embeddings: PromptEmbeddings | None = None,
    dim: int | None = None,
) -> ScorePlan:
    """Check every configured model on the driver (fail fast, naming the key) and plan."""
    sc = cfg.score
    refs: dict[str, str] = {}
    for kind, key in (
        ("nsfw", "nsfw_head"),
        ("watermark", "watermark_head"),
        ("aesthetic", "aesthetic_head"),
        ("toxicity", "toxicity_model"),
    ):
        path = getattr(sc, key)
        if not path:
            refs[kind] = f"{ABSENT}: score.{key} not set"
            continue
        try:
            head = load_head(path, kind)
        except Exception as e:
            raise ValueError(f"score.{key}: {e}") from e
        want = dim if head.input == "image" else None
        if want is not None and head.in_dim != want:
            raise ValueError(
                f"score.{key}: head expects {head.in_dim}-d embeddings, {model_id} has {want}-d"
            )
        refs[kind] = head.model_ref
    if sc.watermark_image_model:
        from laion_spark.models.watermark import load_watermark_model

        try:
            refs["watermark"] = load_watermark_model(
                sc.watermark_image_model, sc.watermark_image_arch, sc.watermark_image_size
            ).model_ref
        except Exception as e:
            raise ValueError(f"score.watermark_image_model: {e}") from e
    pdir = prompts_dir(sc.prompts_dir)
    toxic_words = None
    if sc.word_list_toxicity:
        toxic_words = read_list(sc.toxic_words or pdir / "toxic_words.txt")
        if not sc.toxicity_model:
            refs["toxicity"] = "wordlist"  # replaced per row by the list's digest
    prompts, zref = _prompts(cfg, model_id, clip, prompt_embeddings)
    if prompts is not None and dim is not None and prompts.dim != dim:
        prompts, zref = None, f"{ABSENT}: prompt embeddings are {prompts.dim}-d, images {dim}-d"
    refs["zero_shot"] = zref
    return ScorePlan(
        model_id=model_id,
        nsfw_head=sc.nsfw_head,
        watermark_head=sc.watermark_head,
        aesthetic_head=sc.aesthetic_head,
        toxicity_head=sc.toxicity_model,
        watermark_image_model=sc.watermark_image_model,
        watermark_image_arch=sc.watermark_image_arch,
        watermark_image_size=sc.watermark_image_size,
        prompts=prompts,
        zero_shot_ref=zref,
        child_words=read_list(pdir / "child_words.txt"),
        toxic_words=toxic_words,
        punsafe_threshold=sc.punsafe_threshold,
        pwatermark_threshold=sc.pwatermark_threshold,
        toxicity_threshold=sc.toxicity_threshold,
        device=sc.device,
        refs=refs,
    )


def score_frame(source: DataFrame, plan: ScorePlan) -> DataFrame:
    """Apply the plan to a frame of (sample_id, image_embedding[, text_embedding, text, image])."""

    def fn(batches):
        models = Models(plan)  # once per task; the heads themselves are cached per worker
        device = resolve_device(plan.device)
        for pdf in batches:
            yield score_batch(pdf, plan, models, device)

    return source.mapInPandas(fn, OUT_SCHEMA).withColumn("scored_at", F.current_timestamp())


def model_embeddings(tables: Tables, model_id: str) -> DataFrame:
    return tables.read("embeddings").where(
        (F.col("model_id") == model_id) & F.col("image_embedding").isNotNull()
    )


def pending_embeddings(
    tables: Tables, model_id: str, rescore: bool = False, text_embedding: bool = True
) -> DataFrame:
    """Embeddings of the model with no `scores` row yet (all of them with rescore);
    text_embedding=False leaves the text vectors unread (only a toxicity head uses them,
    and reading a second array column doubles the scan)."""
    emb = model_embeddings(tables, model_id)
    if not rescore:
        emb = tables.pending(emb, "scores", where=F.col("model_id") == F.lit(model_id))
    cols = ["sample_id", "image_embedding"] + (["text_embedding"] if text_embedding else [])
    return emb.select(*cols)


def run(
    spark: SparkSession,
    cfg: Config,
    tables: Tables,
    model_id: str | None = None,
    rescore: bool = False,
    clip=None,
    prompt_embeddings: PromptEmbeddings | None = None,
    limit: int | None = None,
) -> StageResult:
    """Score every embedding of the model that has no score yet; returns counts per flag."""
    t0 = time.time()
    model_id = embedding_model_id(
        cfg, tables, model_id or (clip.model_id if clip is not None else None), "score model_id"
    )
    if model_id is None:
        return StageResult("score", 0, 0, {}, time.time() - t0, {"model_id": None})
    # before any Spark setting is touched: a run on the local path starts no JVM
    from laion_spark.score.local import pending_local, run_local

    todo = pending_local(tables, model_id, rescore, cfg.score.local_max_rows)
    if todo is not None and len(todo) == 0:  # (with or without the image classifier)
        notes = {"model_id": model_id, "pending": 0, "engine": "local"}
        return StageResult("score", 0, 0, {}, time.time() - t0, notes)
    if not cfg.score.watermark_image_model:  # the image classifier reads bytes: Spark's job
        if todo is not None:

            def make_plan(dim: int) -> ScorePlan:
                return build_plan(cfg, model_id, clip, prompt_embeddings, dim=dim)

            return run_local(cfg, tables, t0, model_id, todo, make_plan, rescore, limit)
    # rows per Arrow batch = rows per model call
    with session_conf(spark, {ARROW_BATCH_ROWS: cfg.score.batch_rows}):
        return _run(spark, cfg, tables, t0, model_id, rescore, clip, prompt_embeddings, limit)


def _run(spark, cfg, tables, t0, model_id, rescore, clip, prompt_embeddings, limit) -> StageResult:
    """The stage through Spark jobs (big or remote tables, or the image classifier)."""
    # nothing pending: say so before any model loads or Python worker starts (a JVM-only
    # probe on the keys)
    probe = pending_embeddings(tables, model_id, rescore, text_embedding=False)
    if not probe.select("sample_id").limit(1).collect():
        return StageResult(
            "score", 0, 0, {}, time.time() - t0, {"model_id": model_id, "pending": 0}
        )
    # the dimension from any one row of the model (a short scan, no anti-join): the plan
    # checks the heads against it before anything runs
    first = (
        model_embeddings(tables, model_id)
        .select(F.size("image_embedding").alias("d"))
        .limit(1)
        .collect()
    )
    if not first:
        return StageResult("score", 0, 0, {}, time.time() - t0, {"model_id": model_id})
    plan = build_plan(cfg, model_id, clip, prompt_embeddings, dim=int(first[0]["d"]))
    src = pending_embeddings(tables, model_id, rescore, text_embedding=bool(plan.toxicity_head))
    if limit:
        src = src.limit(int(limit))
    if plan.needs_text:
        cands = tables.read("candidates").select("sample_id", "text")
        src = src.join(cands, "sample_id", "left")
    if plan.needs_images:
        imgs = tables.read("images").select("sample_id", "image")
        src = src.join(imgs, "sample_id", "left")
    scored = score_frame(src, plan).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        stats = scored.select(
            F.count("*").alias("rows"),
            *[
                F.sum(F.array_contains("flags", f).cast("int")).alias(f)
                for f in ("nsfw", "watermark", "toxic", "drop", "bad_embedding")
            ],
            *[
                F.sum(F.when(F.col("nsfw_tag") == t, 1)).alias(t)
                for t in ("UNLIKELY", "UNSURE", "NSFW")
            ],
        ).collect()[0]
        if int(stats["rows"]):
            # one embeddings row per (sample_id, model) gives one score row: no dedup shuffle.
            # `scores` is keyed by sample_id alone, so a pending row can still match a row of
            # another model (it replaces it); with no other model there, pending rows have no
            # row by construction and the MERGE only inserts (a concurrent run's rows are
            # still matched, never doubled)
            others = [m for m in tables.distinct("scores", "model_id") if m != model_id]
            tables.upsert(scored, "scores", update=rescore or bool(others), dedup=False)
    finally:
        scored.unpersist()
    rows = int(stats["rows"])
    by_status = {"scored": rows - int(stats["bad_embedding"] or 0)}
    for k in ("bad_embedding", "nsfw", "watermark", "toxic", "drop", "UNLIKELY", "UNSURE", "NSFW"):
        if stats[k]:
            by_status[k] = int(stats[k])
    absent = sorted(k for k, v in plan.refs.items() if v.startswith(ABSENT))
    notes = {"model_id": model_id}
    if absent:
        notes["absent"] = ",".join(absent)
    return StageResult("score", rows, rows, by_status, time.time() - t0, notes)

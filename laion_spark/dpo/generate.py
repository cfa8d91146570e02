"""DPO_GENERATE stage: N sampled responses per (pool image, prompt template) -> `dpo_candidates`.

    sft_pool(status=ok) x templates  ─anti-join dpo_candidates(model_id)─▶  mapInArrow
        ─▶ dpo_candidates(candidate_id, pool_id, template, prompt, response, params, model_id)

The vision-language model loads once per Python worker (models/vlm.py, `cached`), on the GPU
Spark assigned the task or the CPU; each task feeds it `dpo.generate.batch_size` prompts per
`generate()` call with sampling (temperature, top-p), N return sequences each. Prompt
templates ("short", "detailed", "instruction" = the SFT instruction itself, or any of the
config's) give the diversity the paper gets from several prompts and models.

A unit of work is (pool_id, template) for one model: done when its rows exist with a final
status, so a re-run generates nothing, and a failed batch (failed_to_generate) is redone by
the next run. Sampling seeds are derived from the unit's key, recorded per row.

Responses produced elsewhere enter the same table through `import_responses`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from typing import Any

from laion_spark.stage import StageResult

log = logging.getLogger(__name__)

SUCCESS = "success"
EMPTY = "empty_response"  # the model produced no text (kept: it is what the model does)
FAILED_DECODE = "failed_to_decode"  # the pool image does not decode for this model
FAILED_GENERATE = "failed_to_generate"  # the model failed on the batch (retried next run)
UNKNOWN_POOL = "unknown_pool_id"  # an imported response names no pool row
FINAL = (SUCCESS, EMPTY, FAILED_DECODE)

OUT_COLUMNS = [
    "candidate_id",
    "pool_id",
    "template",
    "prompt",
    "response",
    "sample_index",
    "source",
    "model_id",
    "temperature",
    "top_p",
    "max_new_tokens",
    "seed",
    "status",
    "error_message",
]


def candidate_id(pool_id: str, template: str, model_id: str, sample_index: int) -> str:
    text = "\t".join([pool_id, template, model_id, str(sample_index)])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def unit_seed(base: int, pool_id: str, template: str) -> int:
    """A sampling seed per (pool row, template): reproducible, different across units."""
    digest = hashlib.sha256(f"{base}\t{pool_id}\t{template}".encode()).hexdigest()
    return int(digest[:12], 16)


def fill_template(template: str, instruction: str | None) -> str:
    # plain replace, not str.format: SFT instructions may hold braces
    return template.replace("{instruction}", (instruction or "").strip()).strip()


@functools.cache
def _arrow_out():
    from laion_spark.tables import arrow_schema

    return arrow_schema("dpo_candidates", OUT_COLUMNS)


def _rows_batch(rows: list[dict]):
    import pyarrow as pa

    return pa.RecordBatch.from_pylist(rows, schema=_arrow_out())


def generate_units(vlm, gen_cfg, units: list[dict]) -> list[dict]:
    """Output rows for units of {pool_id, template, prompt, image}: N per unit, or one
    failure row (sample_index 0) for a unit whose image or batch failed."""
    base = {
        "source": "generated",
        "model_id": vlm.model_id,
        "temperature": float(gen_cfg.temperature),
        "top_p": float(gen_cfg.top_p),
        "max_new_tokens": int(gen_cfg.max_new_tokens),
    }
    n = gen_cfg.responses_per_prompt
    out: list[dict] = []

    def row(u: dict, i: int, seed: int, response, status, error=None) -> dict:
        cid = candidate_id(u["pool_id"], u["template"], vlm.model_id, i)
        return {
            **base,
            "candidate_id": cid,
            "pool_id": u["pool_id"],
            "template": u["template"],
            "prompt": u["prompt"],
            "response": response,
            "sample_index": i,
            "seed": seed,
            "status": status,
            "error_message": error,
        }

    good: list[tuple[dict, Any]] = []
    for u in units:
        try:
            good.append((u, vlm.decode(u["image"])))
        except ValueError as e:
            out.append(row(u, 0, 0, None, FAILED_DECODE, str(e)))
    for start in range(0, len(good), gen_cfg.batch_size):
        chunk = good[start : start + gen_cfg.batch_size]
        seed = unit_seed(gen_cfg.seed, chunk[0][0]["pool_id"], chunk[0][0]["template"])
        try:
            texts = vlm.generate(
                [img for _, img in chunk],
                [u["prompt"] for u, _ in chunk],
                n=n,
                temperature=gen_cfg.temperature,
                top_p=gen_cfg.top_p,
                max_new_tokens=gen_cfg.max_new_tokens,
                seed=seed,
            )
        except Exception as e:  # a model failure marks the batch, the job goes on
            msg = f"{type(e).__name__}: {e}"[:1000]
            log.warning("generation failed for a batch of %d prompts: %s", len(chunk), msg)
            out.extend(row(u, 0, seed, None, FAILED_GENERATE, msg) for u, _ in chunk)
            continue
        for (u, _), responses in zip(chunk, texts, strict=True):
            for i, text in enumerate(responses):
                out.append(row(u, i, seed, text, SUCCESS if text else EMPTY))
    return out


def _generate_partition(gen_conf: dict, model_id: str, name: str):
    """mapInArrow function over (pool_id, template, prompt, image) rows."""

    def fn(batches):
        from laion_spark.dpo.settings import GenerateSettings
        from laion_spark.models.device import set_torch_threads
        from laion_spark.models.vlm import load_vlm

        gen_cfg = GenerateSettings(**gen_conf)
        vlm = load_vlm(gen_cfg, name=name)  # once per Python worker
        if vlm.model_id != model_id:
            raise RuntimeError(
                f"executor loaded {vlm.model_id}, driver expected {model_id}: point "
                "dpo.generate.model at the same weights on every node"
            )
        set_torch_threads(gen_cfg.cpu_threads, vlm.device)
        for rb in batches:
            rows = generate_units(vlm, gen_cfg, rb.to_pylist())
            if rows:
                yield _rows_batch(rows)

    return fn


def worker_config(gen_cfg) -> dict:
    """Settings shipped to executors; tiny-llava's directory resolved (built) on the driver."""
    import dataclasses

    from laion_spark.models.vlm import model_directory

    conf = dataclasses.asdict(gen_cfg)
    conf["model"] = model_directory(gen_cfg.model)
    return conf


def units_frame(spark, tables, gen_cfg):
    """(pool_id, template, prompt, image) for every ok pool row and template."""
    from pyspark.sql import functions as F

    templates = spark.createDataFrame(
        sorted(gen_cfg.templates.items()), "template string, template_text string"
    )
    pool = tables.read("sft_pool").where(F.col("status") == "ok")
    # (a lambda: pyspark reads fill_template's type hints as a pandas UDF's and warns)
    fill = F.udf(lambda template, instruction: fill_template(template, instruction), "string")
    return pool.crossJoin(F.broadcast(templates)).select(
        "pool_id",
        "template",
        fill(F.col("template_text"), F.col("instruction")).alias("prompt"),
        "image",
    )


def run(spark, cfg, tables, limit: int | None = None) -> StageResult:
    """Sample responses for every (pool row, template) this model has not answered yet."""
    from pyspark.sql import functions as F

    from laion_spark.dpo import generate_local
    from laion_spark.dpo.pool import pool_from_images
    from laion_spark.models.device import resolve_device
    from laion_spark.models.vlm import model_name, vlm_model_id
    from laion_spark.session import ARROW_BATCH_ROWS, session_conf
    from laion_spark.tables import spark_schema

    t0 = time.time()
    gen_cfg = cfg.dpo.generate
    notes: dict[str, Any] = {}
    # small runs on local tables: in this process, before any Spark call (no JVM starts)
    local = generate_local.eligible(cfg, tables)
    if cfg.dpo.pool.from_images:
        added = generate_local.pool_from_images_local(cfg, tables) if local else None
        if added is None:
            added = pool_from_images(spark, cfg, tables)["num_inserted_rows"]
        notes["pool_added"] = added
    if local:
        res = generate_local.run_local(cfg, tables, t0, notes, limit)
        if res is not None:
            return res
    if not tables.exists("sft_pool") or tables.read("sft_pool").limit(1).count() == 0:
        notes["pool"] = generate_local.EMPTY_POOL
        return StageResult("dpo_generate", 0, 0, {}, time.time() - t0, notes)
    notes["engine"] = "spark"
    conf = worker_config(gen_cfg)
    mid = vlm_model_id(gen_cfg)  # the driver loads no model: the executors do
    done = (F.col("model_id") == F.lit(mid)) & F.col("status").isin(*FINAL)
    todo = tables.pending(
        units_frame(spark, tables, gen_cfg),
        "dpo_candidates",
        keys=("pool_id", "template"),
        where=done,
    )
    if limit:
        todo = todo.limit(int(limit))
    rows_in = todo.count()
    notes.update(model_id=mid, device=resolve_device(gen_cfg.device))
    if rows_in == 0:
        return StageResult("dpo_generate", 0, 0, {}, time.time() - t0, notes)
    # no task with less than one generate() batch: each task loads the model once
    par = spark.sparkContext.defaultParallelism
    todo = todo.repartition(max(1, min(par, -(-rows_in // gen_cfg.batch_size))))
    started = spark.sql("SELECT current_timestamp() AS t").collect()[0]["t"]
    out = todo.mapInArrow(
        _generate_partition(conf, mid, model_name(gen_cfg.model)),
        spark_schema("dpo_candidates", OUT_COLUMNS),
    ).withColumn("generated_at", F.current_timestamp())
    redo = (
        tables.read("dpo_candidates")
        .where((F.col("model_id") == mid) & ~F.col("status").isin(*FINAL))
        .limit(1)
        .count()
    )
    with session_conf(spark, {ARROW_BATCH_ROWS: gen_cfg.arrow_batch_size}):
        tables.upsert(out, "dpo_candidates", update=bool(redo), dedup=False)
    counts = (
        tables.read("dpo_candidates")
        .where((F.col("model_id") == mid) & (F.col("generated_at") >= F.lit(started)))
        .groupBy("status")
        .count()
        .collect()
    )
    by_status = {r["status"]: int(r["count"]) for r in counts}
    notes["responses_per_prompt"] = gen_cfg.responses_per_prompt
    error = None
    if by_status and not by_status.get(SUCCESS) and not by_status.get(EMPTY):
        error = f"no response generated ({json.dumps(by_status)})"
    return StageResult(
        "dpo_generate",
        rows_in=rows_in,
        rows_out=sum(by_status.values()),
        by_status=by_status,
        seconds=time.time() - t0,
        notes=notes,
        error=error,
    )


def import_responses(spark, cfg, tables, path: str) -> StageResult:
    """Import responses produced elsewhere into `dpo_candidates` (JSON list, JSONL or parquet).

    Each record: `response` and either `pool_id` or `id` (the SFT record id, matched against
    sft_pool.original_id); optional `prompt` (default: the pool row's instruction),
    `template` (default "imported"), `model_id` (default "imported"), `sample_index`
    (default: the record's order within its pool row and template). Records naming no pool
    row are kept with status unknown_pool_id. Re-importing the same file adds nothing.
    """
    import pandas as pd
    from pyspark.sql import functions as F

    from laion_spark.tables import spark_schema

    t0 = time.time()
    if path.endswith(".parquet") or "." not in path.rsplit("/", 1)[-1]:
        records = spark.read.parquet(path).toPandas()
    else:
        from laion_spark import storage

        raw = storage.read_bytes(path).decode("utf-8")
        if raw.lstrip().startswith("["):
            records = pd.DataFrame(json.loads(raw))
        else:
            records = pd.DataFrame([json.loads(line) for line in raw.splitlines() if line.strip()])
    if records.empty:
        return StageResult("dpo_import_responses", 0, 0, {}, time.time() - t0)
    if "response" not in records:
        raise ValueError(f"{path}: records need a `response` field")
    if "pool_id" not in records and "id" not in records:
        raise ValueError(f"{path}: records need `pool_id` or `id` (the SFT record id)")
    pool = tables.read("sft_pool").select("pool_id", "original_id", "instruction").toPandas()
    by_pool = pool.set_index("pool_id")["instruction"].to_dict()
    by_original = pool.drop_duplicates("original_id").set_index("original_id")["pool_id"].to_dict()
    rows = []
    counters: dict[tuple[str, str], int] = {}
    for rec in records.to_dict("records"):
        pid = rec.get("pool_id")
        if not isinstance(pid, str) or not pid:
            pid = by_original.get(str(rec.get("id")), None)
        known = pid in by_pool
        pid = pid if isinstance(pid, str) else f"id:{rec.get('id')}"
        template = str(rec.get("template") or "imported")
        model_id = str(rec.get("model_id") or "imported")
        key = (pid, template)
        index = rec.get("sample_index")
        index = int(index) if index is not None and index == index else counters.get(key, 0)
        counters[key] = max(counters.get(key, 0), index + 1)
        text = rec.get("response")
        text = text.strip() if isinstance(text, str) else None
        status = (SUCCESS if text else EMPTY) if known else UNKNOWN_POOL
        rows.append(
            {
                "candidate_id": candidate_id(pid, template, model_id, index),
                "pool_id": pid,
                "template": template,
                "prompt": rec.get("prompt")
                if isinstance(rec.get("prompt"), str)
                else by_pool.get(pid),
                "response": text,
                "sample_index": index,
                "source": "imported",
                "model_id": model_id,
                "temperature": None,
                "top_p": None,
                "max_new_tokens": None,
                "seed": None,
                "status": status,
                "error_message": None if known else f"no sft_pool row for {pid}",
            }
        )
    df = spark.createDataFrame(rows, spark_schema("dpo_candidates", OUT_COLUMNS))
    df = df.withColumn("generated_at", F.current_timestamp())
    new = tables.pending(df, "dpo_candidates", keys=("candidate_id",))
    metrics = tables.upsert(new, "dpo_candidates", update=False)
    by_status: dict[str, int] = {}
    for r in rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    return StageResult(
        "dpo_import_responses",
        rows_in=len(rows),
        rows_out=metrics["num_inserted_rows"],
        by_status=by_status,
        seconds=time.time() - t0,
    )

"""FLYT / M-FLYT over the tables: train on a bounded sample, score the whole pool on
executors, and upsert the score column (flyt_score / mflyt_score) into `scores`.

The downstream task is given as two tables (Delta path, parquet path or catalog name):
  task:    image_embedding array<float>, label string   (labelled training images)
  classes: label string, text_embedding array<float>    (one prompt embedding per class)
or programmatically as ctx.targets["flyt_task"] = (task_img, task_labels, class_txt), or a
list of such tuples for several downstream tasks (the loss is their mean).

Notes written per scorer: rows trained on, steps run and best step (early stopping), the
validation gain curve, and the spread of the trained scores over the training rows (std
and 5th-95th percentile range: what Soft Cap Sampling's alpha has to be compared with).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from laion_spark.curate import flyt
from laion_spark.curate.cluster import to_matrix
from laion_spark.tables import Tables


def _read(spark, where: str) -> DataFrame:
    if "/" in where:
        fmt = "parquet" if where.endswith(".parquet") else "delta"
        return spark.read.format(fmt).load(where)
    return spark.read.table(where)


def load_task(spark, task: str, classes: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cls = _read(spark, classes).select("label", "text_embedding").orderBy("label").collect()
    index = {r["label"]: i for i, r in enumerate(cls)}
    rows = _read(spark, task).select("image_embedding", "label").collect()
    rows = [r for r in rows if r["label"] in index]
    return (
        to_matrix([r[0] for r in rows]),
        np.array([index[r[1]] for r in rows], np.int64),
        to_matrix([r["text_embedding"] for r in cls]),
    )


def score_frame(pool: DataFrame, model: flyt.ScoreModel, out: str) -> DataFrame:
    """DataFrame[sample_id, <out>] with the model applied on executors."""
    bc = pool.sparkSession.sparkContext.broadcast(model)
    if model.kind == "flyt":
        src = pool.where(F.col("image_embedding").isNotNull() & F.col("text_embedding").isNotNull())
        src = src.select("sample_id", "image_embedding", "text_embedding")
    else:
        src = pool.select("sample_id", *[F.col(c).cast("double") for c in model.columns])

    def _apply(it: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        m = bc.value
        for pdf in it:
            if len(pdf) == 0:
                continue
            if m.kind == "flyt":
                x = np.concatenate(
                    [
                        to_matrix(pdf["image_embedding"].tolist()),
                        to_matrix(pdf["text_embedding"].tolist()),
                    ],
                    1,
                )
            else:
                x = pdf[m.columns].to_numpy(np.float64)
            yield pd.DataFrame({"sample_id": pdf["sample_id"], out: m(x).astype(np.float32)})

    return src.mapInPandas(_apply, f"sample_id string, {out} float")


def run_scorer(
    tables: Tables | None, pool: DataFrame, kind: str, params: dict[str, Any], ctx
) -> tuple[flyt.ScoreModel, DataFrame]:
    """Train FLYT (kind flyt) or M-FLYT (kind mflyt) and return the model and scores."""
    cur = ctx.cfg.curate
    s = cur.flyt
    task = ctx.targets.get("flyt_task")
    if task is None:
        if not params.get("task") or not params.get("classes"):
            raise ValueError(f"{kind} needs a downstream task: params task: and classes: paths")
        task = load_task(pool.sparkSession, params["task"], params["classes"])
    columns = [c for c in params.get("columns", s.mflyt_columns) if c in pool.columns]
    need = ["image_embedding", "text_embedding"] + (columns if kind == "mflyt" else [])
    train_df = pool.where(
        F.col("image_embedding").isNotNull() & F.col("text_embedding").isNotNull()
    )
    n = train_df.count()
    if n > s.max_train_rows:
        train_df = train_df.sample(fraction=min(1.0, 1.2 * s.max_train_rows / n), seed=cur.seed)
        train_df = train_df.limit(s.max_train_rows)
    # sorted: the head's training batches (and so its scores) are the same on every run
    rows = (
        train_df.select(
            "sample_id", *[F.col(c).cast("double") if c in columns else F.col(c) for c in need]
        )
        .orderBy("sample_id")
        .toPandas()
    )
    img = to_matrix(rows["image_embedding"].tolist())
    txt = to_matrix(rows["text_embedding"].tolist())
    if kind == "flyt":
        model = flyt.train_flyt_tasks(img, txt, task, s, cur.seed)
        x = np.concatenate([img, txt], 1)
    else:
        if not columns:
            raise ValueError("mflyt: none of the score columns exist in the pool")
        x = rows[columns].to_numpy(np.float64)
        model = flyt.train_mflyt_tasks(x, columns, img, txt, task, s, cur.seed)
        ctx.note(f"{kind}_columns", columns)
        ctx.note(f"{kind}_weights", [round(float(w), 4) for w in model.layers[0][0][0]])
    out = "flyt_score" if kind == "flyt" else "mflyt_score"
    ctx.note(f"{kind}_train_rows", len(rows))
    info = model.info
    ctx.note(f"{kind}_steps", info.get("steps"))
    ctx.note(f"{kind}_best_step", info.get("best_step"))
    if info.get("evals"):
        ev = info["evals"]
        keep = ev[:: max(1, len(ev) // 12)]
        keep += [ev[-1]] if keep[-1] != ev[-1] else []
        ctx.note(f"{kind}_val_gain", [(int(a), round(float(b), 5)) for a, b in keep])
    z = model(x)
    ctx.note(f"{kind}_logit_std", round(float(z.std()), 4))
    ctx.note(f"{kind}_logit_p5_p95", round(float(np.percentile(z, 95) - np.percentile(z, 5)), 4))
    return model, score_frame(pool, model, out)

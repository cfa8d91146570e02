"""The score stage in this process, for small runs on local tables: no Spark job.

Through Spark, scoring 20,000 embeddings took 16 s for 0.9 s of model work: the Python
worker start, the probes, the scoring job with its persist and counts, and the MERGE's
jobs. When the tables are path-based on this machine and the model has at most
`score.local_max_rows` embeddings, the stage instead reads the pending rows with delta-rs,
runs the same `score_batch` here, and commits one delta-rs MERGE (`Tables.upsert_local`):
the same rows, the same keys, the same exactly-once rule.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from laion_spark.config import Config
from laion_spark.lake import arrow_dataset, read_rows, table_rows
from laion_spark.models.device import resolve_device
from laion_spark.score.scoring import ABSENT, Models, ScorePlan, arrow_matrix, score_batch
from laion_spark.stage import StageResult
from laion_spark.tables import Tables, arrow_schema


def _table(tables: Tables, name: str):
    """The Delta table `name` read by delta-rs, or None when it does not exist yet."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(tables.location(name))
    except TableNotFoundError:
        return None


def _is(ds: Any, column: str, value: Any):
    """`column == value` as a dataset filter, in the column's own string type (delta-rs
    may hand string columns over as string_view, which does not compare with string)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.field(column) == pa.scalar(value, ds.schema.field(column).type)


def _model_keys(tables: Tables, name: str, model_id: str) -> Any:
    """sample_ids of `name`'s rows of the model (raises TableNotFoundError: no table)."""
    got = read_rows(tables.location(name), ["sample_id"], equals=("model_id", model_id))
    return got.column("sample_id").combine_chunks()


def pending_local(tables: Tables, model_id: str, rescore: bool, max_rows: int) -> Any | None:
    """sample_ids of the model's embeddings with no score yet (all of them with `rescore`),
    as an Arrow array; None when this run is not for the local path (a non-local table, or
    more than `max_rows` embeddings of the model to scan)."""
    import pyarrow.compute as pc
    from deltalake.exceptions import TableNotFoundError

    if max_rows <= 0 or not (tables.local("embeddings") and tables.local("scores")):
        return None
    try:
        # keys only (rows without an image embedding drop out when run_local reads vectors:
        # testing for null here would read the vectors of every row)
        ids = _model_keys(tables, "embeddings", model_id)
    except TableNotFoundError:
        return None
    if len(ids) > max_rows:
        return None
    scores = _table(tables, "scores")
    if rescore or scores is None:
        return ids
    n_scores = table_rows(tables.location("scores"))
    if n_scores is None or n_scores > 4 * max_rows:
        return None  # a big table (or one without row counts) to anti-join: a Spark job
    done = _model_keys(tables, "scores", model_id)
    return pc.filter(ids, pc.invert(pc.is_in(ids, value_set=done)))


def run_local(
    cfg: Config,
    tables: Tables,
    t0: float,
    model_id: str,
    pending: Any,
    make_plan: Callable[[int], ScorePlan],
    rescore: bool,
    limit: int | None,
) -> StageResult:
    """Score the `pending` sample_ids in this process and MERGE them into `scores`;
    `make_plan(dim)` checks the heads against the embeddings' dimension (stage.build_plan).

    The vectors stream in batches of `score.batch_rows`: the scan's threads read and decode
    the next batches while this thread scores one, and memory holds a few batches of vectors
    rather than all of them (on a 2-core VM, reading all 20,000 512-d vectors first took
    0.2-1.2 s before any scoring began)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    if limit:
        pending = pending[: int(limit)]
    want = pa.array(pending).cast(pa.string())
    toxicity_head = bool(cfg.score.toxicity_model)  # the only reader of text embeddings
    cols = ["sample_id", "image_embedding"] + (["text_embedding"] if toxicity_head else [])
    emb = arrow_dataset(_table(tables, "embeddings"))
    step = max(1, cfg.score.batch_rows)
    # the model's rows only, in the scan (a filter in the column's own type); which of them
    # are pending, and have a vector, is tested per batch here
    batches = emb.to_batches(columns=cols, filter=_is(emb, "model_id", model_id), batch_size=step)
    plan = models = device = text = None
    parts = []
    for batch in batches:
        ids = batch.column("sample_id").cast(pa.string())
        keep = pc.and_(pc.is_in(ids, value_set=want), pc.is_valid(batch.column("image_embedding")))
        if not pc.all(keep).as_py():  # (a filter copies the vectors even when it keeps all)
            batch, ids = batch.filter(keep), ids.filter(keep)
        if not len(batch):
            continue
        if plan is None:
            plan = make_plan(_dim(batch))
            models = Models(plan)
            device = resolve_device(plan.device)
            if plan.needs_text:
                text = _texts(tables, want)
        vectors = arrow_matrix(batch.column("image_embedding"))
        pdf = batch.drop_columns(["image_embedding"]).to_pandas()
        if text is not None:
            keys, values = text
            pdf["text"] = values.take(pc.index_in(ids, value_set=keys)).to_pandas()
        parts.append(score_batch(pdf, plan, models, device, vectors))
    if not parts:  # (a concurrent run scored them between the two reads)
        return StageResult("score", 0, 0, {}, time.time() - t0, {"model_id": model_id})
    scored = pd.concat(parts, ignore_index=True)
    rows = len(scored)
    scored["scored_at"] = datetime.now(UTC)
    out = pa.Table.from_pandas(scored, schema=arrow_schema("scores"), preserve_index=False)
    # as the Spark path: insert-only unless rows of another model may be replaced
    others = [m for m in tables.distinct("scores", "model_id") if m != model_id]
    tables.upsert_local(out, "scores", update=rescore or bool(others))
    by_status: dict[str, int] = {}
    for f in ("bad_embedding", "nsfw", "watermark", "toxic", "drop"):
        k = int(sum(f in (fl if fl is not None else ()) for fl in scored["flags"]))
        if k:
            by_status[f] = k
    for tag, k in scored["nsfw_tag"].value_counts().items():
        by_status[str(tag)] = int(k)
    by_status = {"scored": rows - by_status.get("bad_embedding", 0), **by_status}
    absent = sorted(k for k, v in plan.refs.items() if v.startswith(ABSENT))
    notes = {"model_id": model_id, "engine": "local"}
    if absent:
        notes["absent"] = ",".join(absent)
    return StageResult("score", rows, rows, by_status, time.time() - t0, notes)


def _texts(tables: Tables, want: Any) -> tuple[Any, Any]:
    """(sample_id, text) arrays of the captions of the sample_ids in `want`, for a lookup by
    key (not Arrow's hash join, which refuses list columns beside the keys)."""
    import pyarrow as pa
    from deltalake.exceptions import TableNotFoundError

    try:
        got = read_rows(
            tables.location("candidates"), ["sample_id", "text"], isin=("sample_id", want)
        )
    except TableNotFoundError:
        return pa.array([], pa.string()), pa.array([], pa.string())
    return got.column("sample_id").combine_chunks(), got.column("text").combine_chunks()


def _dim(src: Any) -> int:
    """Length of the first image embedding (the plan checks the heads against it)."""
    first = src.column("image_embedding").slice(0, 1).to_pylist()
    return len(first[0]) if first and first[0] is not None else 0

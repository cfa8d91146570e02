"""The index and merge_index stages in this process, for small local tables: no Spark job.

At 20,000 vectors faiss trains, adds and merges in about a second, and the two stages took
22 s through Spark: the anti-joins, the collision check, the shard job with its persist and
aggregations, the recall job, four MERGEs. When every table they read is a path table on
this machine, the index folder is local, and `embeddings` holds at most
`index.local_max_vectors` rows, both read with delta-rs and build here, with the same
rules (model, subset, takedowns, faiss ids with their collisions, one trained index per
index name, manifest before ids) and the same rows; the index is one shard per run.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import numpy as np

from laion_spark import storage
from laion_spark.config import Config
from laion_spark.index import build
from laion_spark.index.faiss_ids import assign_ids_local
from laion_spark.index.paths import resolve
from laion_spark.index.source import index_dir, taken_down_local
from laion_spark.index.stage import (
    add_vectors,
    index_result,
    manifest_row,
    new_run_id,
    train_new,
    write_manifest,
)
from laion_spark.lake import column_values, read_rows, table_rows
from laion_spark.stage import StageResult

TABLES = ("embeddings", "index_ids", "index_manifest", "subsets", "takedowns", "candidates")


def wants_local(cfg: Config, tables) -> bool:
    """Whether index / merge_index run here (see the module's docstring)."""
    ic = cfg.index
    if ic.local_max_vectors <= 0 or not all(tables.local(t) for t in (*TABLES, "images")):
        return False
    if not storage.is_local(index_dir(cfg)):
        return False
    n = table_rows(tables.location("embeddings"))
    return n is not None and n <= ic.local_max_vectors


def _read(tables, name: str, columns: list[str] | None, **filters: Any):
    """`read_rows` of a table that may not exist yet (then None)."""
    from deltalake.exceptions import TableNotFoundError

    try:
        return read_rows(tables.location(name), columns, **filters)
    except TableNotFoundError:
        return None


def manifest_rows(tables, name: str) -> list[dict]:
    got = _read(tables, "index_manifest", None, equals=("index_name", name))
    return got.to_pylist() if got is not None else []


def index_ids(tables, name: str) -> dict[str, list]:
    """sample_id, faiss_id, shard lists of this index's `index_ids` rows."""
    cols = ["sample_id", "faiss_id", "shard"]
    got = _read(tables, "index_ids", cols, equals=("index_name", name))
    return got.to_pydict() if got is not None else {c: [] for c in cols}


def _vectors(cfg: Config, tables, column: str, keep: set[str] | None = None):
    """(sample_ids, vectors) of this index's model in `column`, non-null and non-empty,
    restricted to `keep` when given."""
    import pyarrow.compute as pc

    from laion_spark.models.clip import embedding_model_id

    model_id = embedding_model_id(cfg, tables, cfg.index.model_id, "index.model_id")
    filters = {"equals": ("model_id", model_id)} if model_id is not None else {}
    if keep is not None:
        filters["isin"] = ("sample_id", sorted(keep))
    got = _read(tables, "embeddings", ["sample_id", column], **filters)
    if got is None or column not in got.column_names:
        return [], [], model_id
    vec = got.column(column)
    ok = pc.fill_null(pc.greater(pc.list_value_length(vec), 0), False)
    got = got.filter(ok)
    ids = got.column("sample_id").to_pylist()
    return ids, list(got.column(column).to_numpy(zero_copy_only=False)), model_id


def run_index(spark, cfg: Config, tables, t0: float, id_fn) -> StageResult:
    """The index stage here: the embeddings not yet in `index_ids` as one new shard."""
    ic = cfg.index
    sids, vectors, model_id = _vectors(cfg, tables, ic.vector_column)
    done = index_ids(tables, ic.name)
    skip = set(done["sample_id"]) | taken_down_local(tables)
    keep = None
    if ic.subset:
        got = _read(tables, "subsets", ["sample_id"], equals=("subset", ic.subset))
        keep = set(got.column("sample_id").to_pylist()) if got is not None else set()
    todo = [i for i, s in enumerate(sids) if s not in skip and (keep is None or s in keep)]
    if not todo:
        notes = {"index": ic.name, "engine": "local"}
        return StageResult(
            "index", 0, 0, {"already_indexed": len(done["sample_id"])}, time.time() - t0, notes
        )
    sids = [sids[i] for i in todo]
    vectors = [vectors[i] for i in todo]
    n_new, dim = len(sids), len(vectors[0])
    trained = [r for r in manifest_rows(tables, ic.name) if r["kind"] == "trained"]
    if trained:
        data = storage.read_bytes(resolve(cfg, trained[0]["path"]))
        factory, train_s = trained[0]["factory"], 0.0
    else:
        pick = np.arange(n_new)
        if n_new > ic.train_max_vectors:  # a seeded sample, as the Spark path takes one
            pick = np.sort(np.random.default_rng(17).choice(n_new, ic.train_max_vectors, False))
        ok = [vectors[i] for i in pick if len(vectors[i]) == dim]
        data, factory, train_s, row = train_new(cfg, build.as_matrix(ok, dim), n_new, dim, model_id)
        write_manifest(spark, tables, [row])
    existing = dict(zip(done["faiss_id"], done["sample_id"], strict=True))
    fids, collisions = assign_ids_local(sids, existing, id_fn)
    run_id = new_run_id()
    t1 = time.time()
    index = build.deserialize(data)
    added, bad = add_vectors(index, np.asarray(fids, dtype="int64"), vectors, dim)
    rows = []
    if index.ntotal:
        shard = f"{run_id}-00000"
        path = storage.join(index_dir(cfg), "shards", f"{shard}.index")
        size = storage.write_bytes(path, build.serialize(index))
        rows.append(
            manifest_row(
                cfg,
                shard,
                "shard",
                path,
                factory,
                model_id,
                index.ntotal,
                dim,
                time.time() - t1,
                size,
                run_id,
            )
        )
        # manifest first, then ids: a shard whose ids never got committed is an orphan that
        # merge skips, and its rows are simply indexed again next run
        write_manifest(spark, tables, rows)
        import pyarrow as pa

        at = np.flatnonzero(added)
        ids = pa.table(
            {
                "index_name": pa.array([ic.name] * len(at), pa.string()),
                "sample_id": pa.array([sids[i] for i in at], pa.string()),
                "faiss_id": pa.array(np.asarray(fids, dtype="int64")[at]),
                "shard": pa.array([shard] * len(at), pa.string()),
            }
        )
        tables.upsert_local(ids, "index_ids")
    notes = {"collisions": collisions, "train_seconds": round(train_s, 1), "run_id": run_id}
    return index_result(cfg, t0, n_new, rows, bad, factory, notes, "local")


def merge_inputs(cfg: Config, tables) -> dict | None:
    """What merge_index builds from, read here: None when this index has no trained index."""
    ic = cfg.index
    man = manifest_rows(tables, ic.name)
    trained = [r for r in man if r["kind"] == "trained"]
    if not trained:
        return None
    ids = index_ids(tables, ic.name)
    committed = dict(Counter(ids["shard"]))
    every = [r for r in man if r["kind"] == "shard"]
    shards = [r for r in every if r["shard"] in committed]
    gone = taken_down_local(tables)
    from laion_spark.index.source import taken_down_faiss_ids

    remove = taken_down_faiss_ids(tables, ic.name)
    remove |= {int(f) for s, f in zip(ids["sample_id"], ids["faiss_id"], strict=True) if s in gone}
    merged = [r for r in man if r["kind"] == "merged"]
    latest = max(merged, key=lambda r: r["created_at"] or 0) if merged else None
    return {
        "trained": trained[0],
        "shards": shards,
        "committed": committed,
        "orphans": len(every) - len(shards),
        "remove": remove,
        "latest": latest,
        "ids": ids,
    }


def heldout_rows(cfg: Config, tables, ids: dict, n: int) -> tuple[list, list]:
    """(image embeddings, text embeddings) of up to `n` indexed samples, a seeded sample."""
    from laion_spark.models.clip import embedding_model_id

    model_id = embedding_model_id(cfg, tables, cfg.index.model_id, "index.model_id")
    filters = {"equals": ("model_id", model_id)} if model_id is not None else {}
    cols = ["sample_id", "image_embedding", "text_embedding"]
    got = _read(
        tables, "embeddings", cols, isin=("sample_id", sorted(set(ids["sample_id"]))), **filters
    )
    if got is None or not got.num_rows:
        return [], []
    pick = np.random.default_rng(7).permutation(got.num_rows)[:n]
    got = got.take(np.sort(pick))

    return column_values(got, "image_embedding"), column_values(got, "text_embedding")


def exact_truth(cfg: Config, tables, ids: dict, remove: set[int], queries, metric: str):
    """Exact top-10 faiss ids per query over the indexed, non-removed vectors, here."""
    from laion_spark.index.merge import TopK

    fid_of = {
        s: int(f) for s, f in zip(ids["sample_id"], ids["faiss_id"], strict=True) if f not in remove
    }
    sids, vectors, _ = _vectors(cfg, tables, cfg.index.vector_column, set(fid_of))
    top = TopK(queries, metric)
    step = 8192
    for i in range(0, len(sids), step):
        x = build.as_matrix(vectors[i : i + step], queries.shape[1])
        top.add(x, np.array([fid_of[s] for s in sids[i : i + step]], dtype="int64"))
    return top.truth()

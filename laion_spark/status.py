"""`laion-spark status`: what each stage would do now, for the current config, in a second.

Counts the rows each stage's anti-join would select (the same rule the stage applies, as
SQL over the tables: DataFusion locally, Spark SQL otherwise; takedowns are not subtracted,
so a count can be a few rows high) and shows each stage's last run from `runs`.
"""

from __future__ import annotations

from typing import Any

from laion_spark.config import Config
from laion_spark.sql import delta_tables, last_runs, local_tables, query


def _literal(value: str) -> str:
    # model ids and names come from our own tables/config; quote them as SQL literals anyway
    return "'" + value.replace("'", "''") + "'"


def _present(cfg: Config) -> set[str]:
    if local_tables(cfg):
        return set(delta_tables(cfg))
    from laion_spark.session import get_spark
    from laion_spark.tables import SPECS, Tables

    tables = Tables(get_spark(cfg), cfg)
    return {n for n in SPECS if tables.exists(n)}


def _count(cfg: Config, sql: str) -> int:
    return int(query(cfg, sql).column(0)[0].as_py() or 0)


def _model_id(cfg: Config, present: set[str]) -> str | None:
    """The embeddings model stages read (models.clip.embedding_model_id's rule, from SQL)."""
    if cfg.index.model_id:
        return cfg.index.model_id
    if "embeddings" not in present:
        return None
    ids = [
        r["model_id"] for r in query(cfg, "SELECT DISTINCT model_id FROM embeddings").to_pylist()
    ]
    ids = [m for m in ids if m]
    if len(ids) <= 1:
        return ids[0] if ids else None
    from laion_spark.models.clip import load_clip

    return load_clip(cfg.embed).model_id


def pending(cfg: Config) -> list[dict[str, Any]]:
    """One row per stage: stage, pending (rows its next run would take, or None), detail."""
    have = _present(cfg)
    out: list[dict[str, Any]] = []

    def add(stage: str, n: int | None, detail: str = "") -> None:
        out.append({"stage": stage, "pending": n, "detail": detail})

    _pipeline(cfg, have, add)
    _dpo(cfg, have, add)
    return out


def _dpo(cfg: Config, have: set[str], add) -> None:
    """The CLIP-DPO stages, once an SFT pool exists. The generating model's and the scoring
    ensemble's ids need their weights (a digest), which status does not load: a response
    of any model counts as an answer, a score of any ensemble as a score."""
    from laion_spark.dpo.generate import FINAL

    if "sft_pool" not in have:
        return
    pool = "(SELECT pool_id FROM sft_pool WHERE status = 'ok')"
    templates = sorted(cfg.dpo.generate.templates)
    units = _count(cfg, f"SELECT count(*) FROM {pool} p") * len(templates)
    if "dpo_candidates" not in have:
        add("dpo_generate", units, f"pool rows x {len(templates)} templates, none answered yet")
        add("dpo_score", 0, "no responses yet")
        return
    final = ", ".join(_literal(x) for x in FINAL)
    answered = _count(
        cfg,
        "SELECT count(*) FROM (SELECT DISTINCT pool_id, template FROM dpo_candidates "
        f"WHERE status IN ({final}) AND template IN ({', '.join(map(_literal, templates))})) d "
        f"LEFT SEMI JOIN {pool} p ON d.pool_id = p.pool_id",
    )
    add(
        "dpo_generate",
        units - answered,
        f"(pool row, template) pairs of {len(templates)} templates with no response (any model)",
    )
    add(
        "dpo_score",
        _count(
            cfg,
            "SELECT count(*) FROM (SELECT pool_id FROM dpo_candidates WHERE status = 'success' "
            f"AND scorer_id IS NULL) c LEFT SEMI JOIN {pool} p ON c.pool_id = p.pool_id",
        ),
        "responses without a CLIP score (any ensemble)",
    )
    pairs = _count(cfg, "SELECT count(*) FROM dpo_pairs") if "dpo_pairs" in have else 0
    add("dpo_select", None, f"recomputed on every run; {pairs} pairs now")


def _pipeline(cfg: Config, have: set[str], add) -> None:
    if "extract_stats" in have:
        row = query(
            cfg,
            "SELECT count(*) AS files, sum(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS failed "
            "FROM extract_stats",
        ).to_pylist()[0]
        add("extract", None, f"{row['files']} files read, {row['failed'] or 0} failed")
    else:
        add("extract", None, "no input read yet")
    if "candidates" not in have:
        add("download", 0, "no candidates yet")
        return
    add("download", _download_pending(cfg, have), "candidates without an images row")
    if "images" not in have:
        return
    model = _model_id(cfg, have)
    ok_images = "(SELECT sample_id FROM images WHERE status = 'success')"
    if model is None or "embeddings" not in have:
        add("embed", _count(cfg, f"SELECT count(*) FROM {ok_images} x"), "nothing embedded yet")
        return
    m = _literal(model)
    done = (
        f"(SELECT sample_id FROM embeddings WHERE model_id = {m} "
        "AND status IN ('success', 'failed_to_decode'))"
    )
    add(
        "embed",
        _count(
            cfg,
            f"SELECT count(*) FROM {ok_images} i LEFT ANTI JOIN {done} d ON i.sample_id = d.sample_id",
        ),
        f"successful images not embedded with {model}",
    )
    emb = _embedded(model)
    add("score", _score_pending(cfg, have, model), "embeddings without a score")
    if "subsets" in have:
        sizes = query(
            cfg, "SELECT subset, count(*) AS n FROM subsets GROUP BY subset ORDER BY subset"
        )
        detail = ", ".join(f"{r['subset']}={r['n']}" for r in sizes.to_pylist())
    else:
        detail = "no subsets yet"
    add("curate", None, f"recomputed on every run; {detail}")
    name = _literal(cfg.index.name)
    to_index = emb
    if cfg.index.subset:
        to_index = (
            f"(SELECT e.sample_id FROM {emb} e LEFT SEMI JOIN (SELECT sample_id FROM subsets "
            f"WHERE subset = {_literal(cfg.index.subset)}) s ON e.sample_id = s.sample_id)"
        )
    if "index_ids" in have:
        indexed = f"(SELECT sample_id FROM index_ids WHERE index_name = {name})"
        n = _count(
            cfg,
            f"SELECT count(*) FROM {to_index} e LEFT ANTI JOIN {indexed} x ON e.sample_id = x.sample_id",
        )
        in_index = _count(cfg, f"SELECT count(*) FROM {indexed} x")
    else:
        n, in_index = _count(cfg, f"SELECT count(*) FROM {to_index} e"), 0
    add("index", n, f"embeddings not in index {cfg.index.name!r}")
    merged = 0
    if "index_manifest" in have:
        rows = query(
            cfg,
            f"SELECT count FROM index_manifest WHERE index_name = {name} AND kind = 'merged' "
            "ORDER BY created_at DESC LIMIT 1",
        ).to_pylist()
        merged = int(rows[0]["count"] or 0) if rows else 0
    add(
        "merge_index",
        abs(in_index - merged),
        f"{in_index} vectors in shards, {merged} in the merged index",
    )


def _download_pending(cfg: Config, have: set[str]) -> int:
    if "candidates" not in have:
        return 0
    if "images" not in have:
        return _count(cfg, "SELECT count(DISTINCT sample_id) FROM candidates")
    return _count(
        cfg,
        "SELECT count(*) FROM (SELECT DISTINCT sample_id FROM candidates) c "
        "LEFT ANTI JOIN images i ON c.sample_id = i.sample_id",
    )


def _embedded(model: str) -> str:
    m = _literal(model)
    return (
        f"(SELECT sample_id FROM embeddings WHERE model_id = {m} AND image_embedding IS NOT NULL)"
    )


def _score_pending(cfg: Config, have: set[str], model: str) -> int:
    emb = _embedded(model)
    if "scores" not in have:
        return _count(cfg, f"SELECT count(*) FROM {emb} e")
    scored = f"(SELECT sample_id FROM scores WHERE model_id = {_literal(model)})"
    return _count(
        cfg, f"SELECT count(*) FROM {emb} e LEFT ANTI JOIN {scored} s ON e.sample_id = s.sample_id"
    )


def nothing_to_do(cfg: Config, stage: str, options: dict[str, Any]) -> str | None:
    """Why `stage` certainly has no work now (its own pending rule, counted with SQL over
    local Delta tables: no JVM), or None when it may have work or this cannot tell cheaply
    (catalog or remote tables, options that widen the work, several embedding models).
    Counts here never subtract takedowns, so they are never below the stage's own: a zero
    here is a zero there. `laion-spark run` answers a no-op run with this in a second."""
    if not local_tables(cfg) or options:
        return None
    try:
        have = set(delta_tables(cfg))
        if stage == "download" and not cfg.download.retry_failed:
            if _download_pending(cfg, have) == 0:
                return "every candidate has an images row"
        elif stage == "score":
            if "embeddings" not in have:
                return "no embeddings yet"
            ids = query(cfg, "SELECT DISTINCT model_id FROM embeddings").column(0).to_pylist()
            ids = [m for m in ids if m]
            if not ids:
                return "no embeddings yet"
            if len(ids) == 1 and _score_pending(cfg, have, ids[0]) == 0:
                return f"every embedding of {ids[0]} has a score"
    except Exception:  # cannot tell here: the stage decides, with Spark
        return None
    return None


def render_status(cfg: Config) -> str:
    rows = pending(cfg)
    runs = {r["stage"]: r for r in last_runs(cfg)}
    lines = [f"{'stage':<12} {'pending':>8}  {'last run (UTC)':<19} {'status':<7} detail"]
    for r in rows:
        last = runs.get(r["stage"])
        when = f"{last['started_at']:%Y-%m-%d %H:%M:%S}" if last else "-"
        status = last["status"] if last else "-"
        n = "-" if r["pending"] is None else str(r["pending"])
        lines.append(f"{r['stage']:<12} {n:>8}  {when:<19} {status:<7} {r['detail']}")
    return "\n".join(lines)

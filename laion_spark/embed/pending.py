"""How many rows the embed stage has to do, per route, read with delta-rs on local tables.

The stage counts its pending rows per language group before the embedding pass (to stop
early when there are none, and for the summary). Through Spark that count is a job of its
own over images ⋈ candidates ⋈ embeddings: about 2 s at 20,000 rows, a fifth of the stage.
On local tables the same rule (`stage.source_rows` + `stage.pending_rows`: successful
images with their caption's route, minus takedowns, minus rows of this model with a final
status made by the text model the route now wants) is applied here to the key columns,
with the Python twins of the Spark expressions (`route_group`, `is_taken_down`).
"""

from __future__ import annotations

from collections import Counter

from laion_spark.lake import column_values, read_rows, table_rows
from laion_spark.models.text_tower import route_group
from laion_spark.tables import Tables

TABLES = ("images", "candidates", "embeddings")


def pending_by_route_local(
    tables: Tables,
    english: list[str] | tuple[str, ...],
    model_id: str,
    tower_ids: dict[str, str],
    final: tuple[str, ...],
    max_rows: int,
) -> dict[str, int] | None:
    """{route: pending rows}; None when a table is not local here or `images` holds more
    than `max_rows` rows (or has no row counts): the caller counts with Spark."""
    from deltalake.exceptions import TableNotFoundError

    from laion_spark.takedown.rules import is_taken_down, load_rules

    if max_rows <= 0 or not all(tables.local(t) for t in TABLES):
        return None
    n = table_rows(tables.location("images"))
    if n is None or n > max_rows:
        return None
    try:
        imgs = read_rows(
            tables.location("images"), ["sample_id", "url"], equals=("status", "success")
        )
    except Exception:  # noqa: BLE001 - no table, or one delta-rs cannot read: Spark's count
        return None
    ids = imgs.column("sample_id").to_pylist()
    urls = imgs.column("url").to_pylist()
    try:
        cands = read_rows(
            tables.location("candidates"),
            ["sample_id", "language", "language_group"],
            isin=("sample_id", ids),
        )
        keys = cands.column("sample_id").to_pylist()
        lang = dict(zip(keys, column_values(cands, "language"), strict=True))
        group = dict(zip(keys, column_values(cands, "language_group"), strict=True))
    except TableNotFoundError:
        lang, group = {}, {}
    done: set[tuple[str, str]] = set()  # (sample_id, the text model that made the row)
    try:
        emb = read_rows(
            tables.location("embeddings"),
            ["sample_id", "status", "text_model_id"],
            equals=("model_id", model_id),
        )
        texts = column_values(emb, "text_model_id")
        for sid, status, text in zip(
            emb.column("sample_id").to_pylist(),
            emb.column("status").to_pylist(),
            texts,
            strict=True,
        ):
            if status in final:
                done.add((sid, text if text is not None else model_id))
    except TableNotFoundError:
        pass
    english_set = frozenset(english)
    rules = load_rules(tables)
    blocks = rules.blocks_urls()
    counts: Counter[str] = Counter()
    for sid, url in zip(ids, urls, strict=True):
        if blocks and is_taken_down(rules, url, sid):
            continue
        # an image without a candidates row has no route (Spark: the left join's null)
        route = route_group(group[sid], lang[sid], english_set) if sid in lang else None
        if (sid, tower_ids.get(route, model_id)) not in done:
            counts[route or "none"] += 1
    return dict(counts)

"""The extract stage in this process, for a few local files into local tables: no Spark job.

Reading the demo's one WAT file (300 pages, 632 pairs) takes 0.3 s in a fresh process;
through Spark the stage took 23 s (the job that reads the files and persists their rows,
the URL dedup's shuffle, the anti-join, two MERGEs). When every input file and table is on
this machine and the inputs are small (`extract.local_max_bytes`, compressed), the files
are read here one after another with the same `file_rows` a Spark task runs, the same rules
pick the rows (first seen per URL, URLs already in `candidates` out, takedowns out), and
delta-rs commits them (`Tables.upsert_local`): the same rows and keys as the Spark path.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from laion_spark import storage
from laion_spark.config import Config
from laion_spark.extract.stage import PAIR_COLS, ROW_NAMES, STATS_COLS, file_rows
from laion_spark.lake import read_rows, table_rows
from laion_spark.tables import Tables, arrow_rows, arrow_schema
from laion_spark.takedown.rules import is_taken_down, load_rules

TABLES = ("candidates", "extract_stats", "takedowns")


def wants_local(cfg: Config, tables: Tables, files: list[str]) -> bool:
    """Whether this run takes the in-process path: local tables, input files on this machine
    whose compressed size is at most `extract.local_max_bytes`, and a `candidates` table of at
    most `extract.local_max_rows` rows (its keys, and with URL dedup its URLs, are read)."""
    ex = cfg.extract
    if ex.local_max_bytes <= 0 or not all(tables.local(t) for t in TABLES):
        return False
    if not all(storage.is_local(f) for f in files):
        return False
    # (a missing file is read as a task reads it: it gets its `failed` stats row)
    if sum(os.path.getsize(f) for f in files if os.path.isfile(f)) > ex.local_max_bytes:
        return False
    have = table_rows(tables.location("candidates"))
    if have is None:  # no table yet (fine), or files without row counts (Spark's job)
        return not tables.exists("candidates")
    return have <= ex.local_max_rows


def read_files(files: list[str], options: dict) -> tuple[list[tuple], list[dict]]:
    """(pair rows in PAIR_COLS order, one stats dict per file in STATS_COLS) of `files`."""
    kind = ROW_NAMES.index("kind")
    at = [ROW_NAMES.index(c) for c in PAIR_COLS]
    stats_at = {c: ROW_NAMES.index(c) for c in STATS_COLS}
    pairs: list[tuple] = []
    stats: list[dict] = []
    for path in files:
        for row in file_rows(path, options):
            if row[kind] == "pair":
                pairs.append(tuple(row[i] for i in at))
            else:
                stats.append({c: row[i] for c, i in stats_at.items()})
    return pairs, stats


def new_pairs(tables: Tables, pairs: list[tuple], dedup_by_url: bool) -> Any:
    """The rows to insert, as an Arrow table in the candidates' types: one per sample_id
    (and with `dedup_by_url` one per URL, URLs already in `candidates` left out), the first
    seen in (file, offset, sample_id) order, minus what takedowns block."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = list(zip(*pairs, strict=True)) if pairs else [[] for _ in PAIR_COLS]
    schema = arrow_schema("candidates", PAIR_COLS)
    table = pa.table([pa.array(c, f.type) for c, f in zip(cols, schema, strict=True)], schema)
    order = [("source_file", "ascending"), ("source_offset", "ascending")]
    table = table.sort_by([*order, ("sample_id", "ascending")])
    for key in ["sample_id"] + (["url"] if dedup_by_url else []):
        table = _first_per(table, key)
    if dedup_by_url and table.num_rows and tables.exists("candidates"):
        seen = read_rows(tables.location("candidates"), ["url"]).column("url")
        table = table.filter(pc.invert(pc.is_in(table.column("url"), value_set=seen)))
    rules = load_rules(tables)
    if rules.blocks_urls() and table.num_rows:
        urls, ids = table.column("url").to_pylist(), table.column("sample_id").to_pylist()
        keep = [not is_taken_down(rules, u, s) for u, s in zip(urls, ids, strict=True)]
        table = table.filter(pa.array(keep))
    now = pa.array([datetime.now(UTC)] * table.num_rows, pa.timestamp("us", tz="UTC"))
    return table.append_column("extracted_at", now)


def _first_per(table: Any, key: str) -> Any:
    """The first row of `table` (in its order) for each value of `key`."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if table.num_rows < 2:
        return table
    # the position of each row's first occurrence, by a stable sort on the key
    idx = pc.sort_indices(table, [(key, "ascending")]).to_numpy()
    keys = table.column(key).take(pa.array(idx)).combine_chunks()
    starts = np.ones(len(idx), dtype=bool)
    starts[1:] = pc.not_equal(keys.slice(1), keys.slice(0, len(idx) - 1)).to_numpy(
        zero_copy_only=False
    )
    return table.take(pa.array(np.sort(idx[starts])))


def run_local(cfg: Config, tables: Tables, files: list[str]) -> tuple[list[dict], int, int]:
    """Extract `files` here and commit them: (stats rows, pairs read, rows inserted)."""
    pairs, stats = read_files(files, cfg.extract.to_options())
    rows = new_pairs(tables, pairs, cfg.extract.dedup_by_url)
    inserted = 0
    if rows.num_rows:
        # insert-only: the first file a sample came from stays its provenance on re-runs
        got = tables.upsert_local(rows, "candidates", update=False)
        inserted = got["num_inserted_rows"]
    finished = datetime.now(UTC)
    done = [{**s, "finished_at": finished} for s in stats]
    tables.upsert_local(arrow_rows("extract_stats", done), "extract_stats")
    return stats, sum(int(s["pairs"] or 0) for s in stats), inserted

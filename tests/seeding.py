"""Seed test tables fast: one delta-rs write per table, in the table's declared schema.

A Spark Delta write costs seconds per table on 2 cores; tests that only need rows in
place (the stages themselves MERGE, and Spark reads these tables like any other) seed
them here instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pyarrow as pa
from deltalake import write_deltalake

from laion_spark.tables import arrow_schema


def seed_rows(tables, name: str, columns: str | Sequence[str], rows: Iterable[Sequence]) -> None:
    """Append `rows` (tuples in the order of `columns`, a list or a space-separated string)
    to table `name`; the declared columns not given are null."""
    cols = columns.split() if isinstance(columns, str) else list(columns)
    data = pa.Table.from_pylist(
        [dict(zip(cols, r, strict=True)) for r in rows], schema=arrow_schema(name)
    )
    write_deltalake(tables.location(name), data, mode="append")

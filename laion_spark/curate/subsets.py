"""Writing subsets so that a re-run replaces their rows exactly.

`Tables.replace_in` with scope `subset in names`: one MERGE on (subset, sample_id) inserts
new rows, updates repeats, and deletes the rows of those subsets the new selections no
longer hold, so a re-run neither duplicates nor leaves stale rows, and other subsets are
never touched. The stage writes all subsets of a run in that one MERGE (one Delta commit;
a MERGE per subset was most of the stage's time on small pools).
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from laion_spark.tables import Tables

COLUMNS = ("subset", "sample_id", "repeat", "created_at")


def subset_rows(name: str, selection: DataFrame) -> tuple[DataFrame, int]:
    """The rows subset `name` gets from `selection` (sample_id, repeat), materialised (the
    filter runs here, once: the MERGE may scan its source twice, and filters are costly),
    and their number."""
    rows = (
        selection.select(
            "sample_id", F.coalesce(F.col("repeat"), F.lit(1)).cast("int").alias("repeat")
        )
        .where(F.col("repeat") > 0)
        .groupBy("sample_id")
        .agg(F.max("repeat").alias("repeat"))
        .withColumn("subset", F.lit(name))
        .withColumn("created_at", F.current_timestamp())
        .select(*COLUMNS)
    )
    rows = rows.localCheckpoint(eager=True)
    return rows, rows.count()


def replace_subsets(tables: Tables, rows: dict[str, DataFrame]) -> None:
    """Make each subset named in `rows` exactly its rows (from subset_rows), in one MERGE."""
    if not rows:
        return
    parts = list(rows.values())
    union = parts[0]
    for p in parts[1:]:
        union = union.unionByName(p)
    tables.replace_in(union, "subsets", "subset", list(rows))


def write_subset(tables: Tables, name: str, selection: DataFrame) -> int:
    """Replace subset `name` with `selection` (sample_id, repeat); returns rows written."""
    rows, n = subset_rows(name, selection)
    replace_subsets(tables, {name: rows})
    return n


def read_subset(tables: Tables, name: str) -> DataFrame:
    return tables.read("subsets").where(F.col("subset") == name).select("sample_id", "repeat")

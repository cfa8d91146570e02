"""Writing a subset so that a re-run replaces its rows exactly.

`Tables.replace` with scope `subset = name`: one MERGE on (subset, sample_id) inserts new
rows, updates repeats, and deletes the subset's rows the new selection no longer holds, so a
re-run neither duplicates nor leaves stale rows, and other subsets are never touched.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from laion_spark.tables import Tables


def write_subset(tables: Tables, name: str, selection: DataFrame) -> int:
    """Replace subset `name` with `selection` (sample_id, repeat); returns rows written."""
    rows = (
        selection.select(
            "sample_id", F.coalesce(F.col("repeat"), F.lit(1)).cast("int").alias("repeat")
        )
        .where(F.col("repeat") > 0)
        .groupBy("sample_id")
        .agg(F.max("repeat").alias("repeat"))
        .withColumn("subset", F.lit(name))
        .withColumn("created_at", F.current_timestamp())
    )
    # materialise once: the MERGE may scan its source twice, and filters are costly
    rows = rows.localCheckpoint(eager=True)
    tables.replace(
        rows.select("subset", "sample_id", "repeat", "created_at"), "subsets", {"subset": name}
    )
    return rows.count()


def read_subset(tables: Tables, name: str) -> DataFrame:
    return tables.read("subsets").where(F.col("subset") == name).select("sample_id", "repeat")

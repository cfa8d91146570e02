"""Writing a subset so that a re-run replaces its rows exactly.

Rows go in with Tables.upsert (MERGE on (subset, sample_id): new rows inserted, repeat
updated). Then a delete-only MERGE removes the subset's rows that the new selection no
longer contains (WHEN NOT MATCHED BY SOURCE AND t.subset = name), so a re-run neither
duplicates nor leaves stale rows, and other subsets are never touched.
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
    # materialise once: both MERGEs must see the same selection, and filters are costly
    rows = rows.localCheckpoint(eager=True)
    n = rows.count()
    tables.upsert(rows.select("subset", "sample_id", "repeat", "created_at"), "subsets")
    cleanup = (
        tables.delta("subsets")
        .alias("t")
        .merge(
            rows.select("subset", "sample_id").alias("s"),
            "t.subset = s.subset AND t.sample_id = s.sample_id",
        )
        .whenNotMatchedBySourceDelete(condition=F.col("t.subset") == F.lit(name))
    )
    cleanup.execute()
    return n


def read_subset(tables: Tables, name: str) -> DataFrame:
    return tables.read("subsets").where(F.col("subset") == name).select("sample_id", "repeat")


def subset_names(tables: Tables) -> list[str]:
    return sorted(r[0] for r in tables.read("subsets").select("subset").distinct().collect())

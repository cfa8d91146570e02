"""Every table a report reads, pinned at one Delta version (time travel), so it reproduces.

    snap = Snapshot.resolve(tables, as_of=None)          # each table at its current version
    snap = Snapshot.resolve(tables, "2026-11-30 12:00")  # each table as it was then
    snap = Snapshot.resolve(tables, "candidates=3,images=5")
    snap = Snapshot.resolve(tables, "reports/x/report.json")   # the versions that report read
    df = snap.read("images")                             # versionAsOf the pinned version

Versions are resolved once, up front: a stage writing while the report runs cannot make
two aggregates see two states of one table. Reading never creates a table (unlike
`Tables.read`): a table that did not exist at the snapshot is an empty frame with its
declared schema and version None.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from laion_spark.tables import SPECS, Tables

# the tables a report reads (index_ids / index_manifest only for the index probes)
REPORT_TABLES = (
    "candidates",
    "extract_stats",
    "images",
    "embeddings",
    "scores",
    "subsets",
    "takedowns",
    "runs",
    "index_manifest",
)

_PAIRS = re.compile(r"^\s*[a-z_]+\s*=\s*\d+\s*(,\s*[a-z_]+\s*=\s*\d+\s*)*$")


class AsOfError(ValueError):
    """An --as-of value that names no state of the tables; the message says why."""


@dataclass
class Snapshot:
    tables: Tables
    versions: dict[str, int | None]
    as_of: str | None = None
    _frames: dict[str, DataFrame] = field(default_factory=dict, repr=False)

    @classmethod
    def resolve(
        cls, tables: Tables, as_of: str | None = None, names: tuple[str, ...] = REPORT_TABLES
    ) -> Snapshot:
        current = {n: current_version(tables, n) for n in names}
        if as_of is None or str(as_of).strip() == "":
            return cls(tables, current, None)
        spec = str(as_of).strip()
        if spec.endswith(".json") or os.path.isdir(spec):
            return cls(tables, _from_report(spec, current), spec)
        if _PAIRS.match(spec):
            versions = dict(current)
            for part in spec.split(","):
                name, v = (x.strip() for x in part.split("="))
                if name not in current:
                    raise AsOfError(f"--as-of {spec}: {name} is not a table the report reads")
                versions[name] = _checked(name, int(v), current[name], spec)
            return cls(tables, versions, spec)
        if spec.isdigit():
            v = int(spec)
            return cls(
                tables,
                {n: _checked(n, v, c, spec) if c is not None else None for n, c in current.items()},
                spec,
            )
        return cls(tables, _at_time(tables, spec, current), spec)

    def exists(self, name: str) -> bool:
        return self.versions.get(name) is not None

    def read(self, name: str) -> DataFrame:
        """Table `name` at its pinned version (empty with the declared schema if absent).
        One DataFrame per table: Delta loads the version's snapshot once."""
        if name not in self._frames:
            version = self.versions.get(name)
            spark = self.tables.spark
            if version is None:
                df = spark.createDataFrame([], SPECS[name].schema)
            else:
                reader = spark.read.format("delta").option("versionAsOf", int(version))
                if self.tables.database:
                    df = reader.table(self.tables.location(name))
                else:
                    df = reader.load(self.tables.location(name))
            self._frames[name] = df
        return self._frames[name]

    def describe(self) -> dict[str, dict]:
        """{table: {version, location}} for report.json."""
        return {
            n: {"version": v, "location": self.tables.location(n)}
            for n, v in sorted(self.versions.items())
        }


def current_version(tables: Tables, name: str) -> int | None:
    """The table's latest Delta version: read from the log by delta-rs for local tables (no
    Spark job), else through Spark (catalog tables, object stores, whose credentials only
    Spark is given)."""
    from laion_spark import storage

    location = tables.location(name)
    if not tables.database and storage.is_local(location):
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            return int(DeltaTable(location).version())
        except TableNotFoundError:
            return None
    return tables.version(name)


def _checked(name: str, v: int, current: int | None, spec: str) -> int:
    if current is None:
        raise AsOfError(f"--as-of {spec}: table {name} does not exist")
    if v > current:
        raise AsOfError(
            f"--as-of {spec}: table {name} has versions 0..{current}, not {v} "
            f"(give per-table versions as {name}=N,... or a timestamp)"
        )
    return v


def _from_report(path: str, current: dict[str, int | None]) -> dict[str, int | None]:
    p = os.path.join(path, "report.json") if os.path.isdir(path) else path
    try:
        with open(p, encoding="utf-8") as f:
            recorded = json.load(f)["tables"]
    except (OSError, ValueError, KeyError) as e:
        raise AsOfError(f"--as-of {path}: not a report.json with table versions ({e})") from None
    out: dict[str, int | None] = {}
    for name, cur in current.items():
        v = (recorded.get(name) or {}).get("version")
        out[name] = None if v is None else _checked(name, int(v), cur, path)
    return out


def _at_time(tables: Tables, spec: str, current: dict[str, int | None]) -> dict[str, int | None]:
    """Each table's latest version committed at or before `spec` (None: created later)."""
    spark = tables.spark
    ts = spark.range(1).select(F.try_to_timestamp(F.lit(spec)).alias("t")).first()["t"]
    if ts is None:
        raise AsOfError(
            f"--as-of {spec!r}: not a version (N, table=N,...), a report.json or a timestamp "
            f"such as '2026-11-30 12:00:00'"
        )
    out: dict[str, int | None] = {}
    for name, cur in current.items():
        if cur is None:
            out[name] = None
            continue
        # compared in Spark, so the timestamp and Delta's commit times share the session zone
        row = (
            tables.delta(name)
            .history()
            .where(F.col("timestamp") <= F.lit(ts))
            .agg(F.max("version").alias("v"))
            .first()
        )
        out[name] = None if row is None or row["v"] is None else int(row["v"])
    return out

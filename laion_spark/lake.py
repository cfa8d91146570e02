"""Read Delta tables into pandas without Spark (delta-rs `deltalake`), or with Spark.

The search service should start without a JVM: path-based tables are read with the
`deltalake` package. Catalog tables (tables.database set) need the Spark session.
"""

from __future__ import annotations

import pandas as pd

from laion_spark.config import Config


def arrow_dataset(dt):
    """`dt.to_pyarrow_dataset()` (a deltalake DeltaTable), local files read through pyarrow's
    own filesystem: read through delta-rs's, a process sometimes aborted at exit
    ("terminate called without an active exception", exit code 134) after a clean run."""
    from urllib.parse import unquote, urlsplit

    from pyarrow import fs

    uri = dt.table_uri
    if uri.startswith("file:"):
        uri = unquote(urlsplit(uri).path)
    if uri.startswith("/"):
        return dt.to_pyarrow_dataset(filesystem=fs.SubTreeFileSystem(uri, fs.LocalFileSystem()))
    return dt.to_pyarrow_dataset()


class Lake:
    def __init__(self, cfg: Config, spark=None, tables=None):
        self.cfg = cfg
        self.spark = spark
        self.tables = tables
        if cfg.tables.database and tables is None:
            if spark is None:
                raise ValueError("tables.database is set: catalog tables need a Spark session")
            from laion_spark.tables import Tables

            self.tables = Tables(spark, cfg)

    def location(self, name: str) -> str:
        return f"{self.cfg.tables_root.rstrip('/')}/{name}"

    def _dt(self, name: str):
        from deltalake import DeltaTable

        try:
            return DeltaTable(self.location(name))
        except Exception:  # not a Delta table (yet)
            return None

    def exists(self, name: str) -> bool:
        if self.cfg.tables.database:
            return self.tables.exists(name)
        return self._dt(name) is not None

    def read(
        self, name: str, columns: list[str], where: tuple[str, object] | None = None
    ) -> pd.DataFrame | None:
        """Columns of table `name` (those that exist) as pandas, optionally `col == value`."""
        if self.cfg.tables.database:
            if not self.tables.exists(name):
                return None
            df = self.tables.read(name)
            cols = [c for c in columns if c in df.columns]
            if where is not None:
                df = df.where(df[where[0]] == where[1])
            return df.select(*cols).toPandas()
        dt = self._dt(name)
        if dt is None:
            return None
        import pyarrow.compute as pc

        ds = arrow_dataset(dt)
        cols = [c for c in columns if c in ds.schema.names]
        flt = (pc.field(where[0]) == where[1]) if where is not None else None
        return ds.to_table(columns=cols, filter=flt).to_pandas()

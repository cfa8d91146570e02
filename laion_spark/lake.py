"""Read Delta tables into pandas without Spark (delta-rs `deltalake`), or with Spark.

The search service should start without a JVM: path-based tables are read with the
`deltalake` package. Catalog tables (tables.database set) need the Spark session.
"""

from __future__ import annotations

import functools
from typing import Any

import pandas as pd

from laion_spark.config import Config


@functools.cache
def arrow_memory_pool() -> None:
    """Arrow's jemalloc pool for this process's reads, unless ARROW_DEFAULT_MEMORY_POOL
    chooses. On a 2-core VM the first read of 40 MB of vectors in a fresh process took
    0.07-1.4 s with the default mimalloc pool (over 0.4 s in half the runs), 0.12-0.14 s
    with jemalloc (then 0.06 s)."""
    import os

    import pyarrow as pa

    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except NotImplementedError:  # a pyarrow built without jemalloc keeps its default
        pass


def arrow_dataset(dt):
    """`dt.to_pyarrow_dataset()` (a deltalake DeltaTable), local files read through pyarrow's
    own filesystem: read through delta-rs's, a process sometimes aborted at exit
    ("terminate called without an active exception", exit code 134) after a clean run."""
    from urllib.parse import unquote, urlsplit

    from pyarrow import fs

    arrow_memory_pool()

    uri = dt.table_uri
    if uri.startswith("file:"):
        uri = unquote(urlsplit(uri).path)
    if uri.startswith("/"):
        return dt.to_pyarrow_dataset(filesystem=fs.SubTreeFileSystem(uri, fs.LocalFileSystem()))
    return dt.to_pyarrow_dataset()


def table_rows(location: str) -> int | None:
    """Rows of the local Delta table at `location` from its log's per-file statistics (no
    data file read); None when there is no table or a file carries no row count. What the
    in-process paths ask before they take a table into memory."""
    import pyarrow as pa
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        adds = pa.table(DeltaTable(location).get_add_actions(flatten=True))
    except TableNotFoundError:
        return None
    if not adds.num_rows:
        return 0
    counts = adds.column("num_records").to_pylist()
    return None if any(c is None for c in counts) else int(sum(counts))


def plain_types(table):
    """View and large types as their plain forms: delta-rs hands string columns of the files
    it wrote over as string_view, and joins and lookups need both sides in one type."""
    import pyarrow as pa

    fields = []
    for f in table.schema:
        t = f.type
        if t in (pa.string_view(), pa.large_string()):
            t = pa.string()
        elif t in (pa.binary_view(), pa.large_binary()):
            t = pa.binary()
        elif pa.types.is_large_list(t) or pa.types.is_list_view(t):
            t = pa.list_(t.value_type)
        fields.append(pa.field(f.name, t))
    schema = pa.schema(fields)
    return table if schema == table.schema else table.cast(schema)


def column_values(table, name: str) -> list:
    """A column of an Arrow table as Python values, or Nones when the table lacks it:
    `read_rows` returns only the columns a table has, and older tables lack newer ones."""
    if name in table.column_names:
        return table.column(name).to_pylist()
    return [None] * table.num_rows


def read_rows(
    location: str,
    columns: list[str] | None = None,
    version: int | None = None,
    isin: tuple[str, Any] | None = None,
    equals: tuple[str, Any] | None = None,
):
    """`columns` (those the table has; None: all) of the Delta table at `location` (as of
    `version`) as an Arrow table in plain types, keeping rows whose `isin[0]` is one of
    `isin[1]` and whose `equals[0]` equals `equals[1]`. In this process, by delta-rs: for
    the small reads where a Spark job costs seconds. Raises deltalake's
    TableNotFoundError when there is no table."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    ds = arrow_dataset(DeltaTable(location, version=version))
    cols = [c for c in columns if c in ds.schema.names] if columns is not None else None
    typ = ds.schema.field
    flt = None
    if isin is not None:
        flt = pc.field(isin[0]).isin(pa.array(isin[1]).cast(typ(isin[0]).type))
    if equals is not None:
        eq = pc.field(equals[0]) == pa.scalar(equals[1], typ(equals[0]).type)
        flt = eq if flt is None else flt & eq
    try:  # the scan filters (in C++, on the scan's threads)
        return plain_types(ds.to_table(columns=cols, filter=flt)).combine_chunks()
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    # a filter the scan cannot apply to some file (e.g. a view type delta-rs wrote): batch
    # by batch after the read, in plain types; the filters' columns are read too (a caller
    # may not ask for them), then dropped
    want = cols
    if cols is not None:
        want = cols + [f[0] for f in (isin, equals) if f is not None and f[0] not in cols]
    parts = []
    for batch in ds.to_batches(columns=want):
        t = plain_types(pa.Table.from_batches([batch]))
        mask = None
        if isin is not None:
            mask = pc.is_in(t.column(isin[0]), value_set=pa.array(isin[1]))
        if equals is not None:
            eq = pc.fill_null(pc.equal(t.column(equals[0]), pa.scalar(equals[1])), False)
            mask = eq if mask is None else pc.and_(mask, eq)
        t = t if mask is None else t.filter(mask)
        parts.append(t if cols is None else t.select(cols))
    if not parts:
        empty = ds.schema.empty_table()
        return plain_types(empty if cols is None else empty.select(cols))
    return pa.concat_tables(parts).combine_chunks()


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
        if self._dt(name) is None:
            return None
        return read_rows(self.location(name), columns, equals=where).to_pandas()

"""SQL over the Delta tables without a JVM: delta-rs + DataFusion, Spark only where needed.

    table = query(cfg, "SELECT status, count(*) n FROM images GROUP BY status")  # pyarrow.Table
    print(render(table, limit=20, truncate=60))

Every existing table of `SPECS` is a view by its name, with either engine. `engine="auto"`
answers path-based local tables through `deltalake.QueryBuilder` (DataFusion: no JVM, a
fraction of a second) and uses Spark SQL for catalog tables (`tables.database`), remote
roots, or a query DataFusion cannot run (a Spark-only function), saying so. `engine="spark"`
forces Spark; `engine="datafusion"` refuses to fall back.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa

from laion_spark.config import Config
from laion_spark.storage import is_local

log = logging.getLogger(__name__)

ENGINES = ("auto", "datafusion", "spark")


class EngineUnavailable(ValueError):
    """The asked-for engine cannot read these tables (e.g. DataFusion on catalog tables)."""


def local_tables(cfg: Config) -> bool:
    """Tables delta-rs can read here without Spark: path-based, on this machine."""
    return not cfg.tables.database and is_local(cfg.tables_root)


def delta_tables(cfg: Config) -> dict[str, Any]:
    """name -> deltalake.DeltaTable for every SPECS table that exists under the root."""
    from deltalake import DeltaTable

    from laion_spark.tables import SPECS

    root = cfg.tables_root.rstrip("/")
    out = {}
    for name in SPECS:
        try:
            out[name] = DeltaTable(f"{root}/{name}")
        except Exception:  # not written yet
            continue
    return out


def _datafusion(cfg: Config, sql: str) -> pa.Table:
    from deltalake import QueryBuilder

    qb = QueryBuilder()
    for name, dt in delta_tables(cfg).items():
        qb.register(name, dt)
    return _plain_types(pa.table(qb.execute(sql).read_all()))


def _plain_types(table: pa.Table) -> pa.Table:
    """DataFusion returns string_view/binary_view columns; give consumers plain Arrow types."""
    fields = []
    for f in table.schema:
        t = f.type
        if t == pa.string_view():
            t = pa.string()
        elif t == pa.binary_view():
            t = pa.binary()
        fields.append(pa.field(f.name, t, f.nullable))
    return table.cast(pa.schema(fields))


def _spark(cfg: Config, sql: str) -> pa.Table:
    from laion_spark.session import get_spark
    from laion_spark.tables import Tables

    spark = get_spark(cfg)
    tables = Tables(spark, cfg)
    tables.register_views()
    return spark.sql(sql).toArrow()


def query(cfg: Config, sql: str, engine: str = "auto") -> pa.Table:
    """Run `sql` over the tables (each a view by its name); the result as a pyarrow Table."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if engine == "spark":
        return _spark(cfg, sql)
    if not local_tables(cfg):
        if engine == "datafusion":
            raise EngineUnavailable(
                "DataFusion reads local path-based tables only; these are "
                + (
                    f"catalog tables ({cfg.tables.database})"
                    if cfg.tables.database
                    else f"under {cfg.tables_root}"
                )
                + ": use --engine spark"
            )
        return _spark(cfg, sql)
    try:
        return _datafusion(cfg, sql)
    except Exception as e:
        if engine == "datafusion":
            raise
        log.info(
            "DataFusion could not run this query (%s); running it with Spark SQL", _first_line(e)
        )
        return _spark(cfg, sql)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def _cell(v: Any, truncate: int) -> str:
    if v is None:
        s = "NULL"
    elif isinstance(v, bytes):
        s = "[" + " ".join(f"{b:02X}" for b in v[:16]) + (" ...]" if len(v) > 16 else "]")
    elif isinstance(v, float):
        s = repr(v)
    elif isinstance(v, list) and v and isinstance(v[0], tuple):  # Arrow map -> [(k, v)]
        s = "{" + ", ".join(f"{k} -> {x}" for k, x in v) + "}"
    elif isinstance(v, list):
        s = "[" + ", ".join("NULL" if x is None else str(x) for x in v) + "]"
    else:
        s = str(v)
    if truncate > 0 and len(s) > truncate:
        s = s[: max(0, truncate - 3)] + "..."
    return s


def render(table: pa.Table, limit: int = 20, truncate: int = 60) -> str:
    """A result as Spark's `DataFrame.show` draws it (borders, right-aligned cells)."""
    names = table.column_names
    rows = table.slice(0, limit).to_pylist()
    cells = [[_cell(r[n], truncate) for n in names] for r in rows]
    widths = [max([len(n), *(len(c[i]) for c in cells)]) for i, n in enumerate(names)]
    line = "+" + "+".join("-" * w for w in widths) + "+"
    out = [line, "|" + "|".join(n.rjust(w) for n, w in zip(names, widths, strict=True)) + "|", line]
    for c in cells:
        out.append("|" + "|".join(x.rjust(w) for x, w in zip(c, widths, strict=True)) + "|")
    out.append(line)
    if table.num_rows > limit:
        out.append(f"only showing top {limit} row{'s' if limit != 1 else ''}")
    return "\n".join(out)


def table_counts(cfg: Config) -> list[dict]:
    """Each existing table: name, rows, Delta version, location, without Spark when local.

    Row counts come from the Delta log's per-file statistics (no data file is read); a file
    written without statistics is counted by a query.
    """
    if not local_tables(cfg):
        from laion_spark.session import get_spark
        from laion_spark.tables import Tables

        return Tables(get_spark(cfg), cfg).counts()
    out = []
    for name, dt in delta_tables(cfg).items():
        actions = pa.table(dt.get_add_actions(flatten=True))
        counts = actions.column("num_records").to_pylist() if actions.num_rows else []
        if any(c is None for c in counts):
            rows = _datafusion(cfg, f'SELECT count(*) AS n FROM "{name}"').column(0)[0].as_py()
        else:
            rows = int(sum(counts))
        location = f"{cfg.tables_root.rstrip('/')}/{name}"
        out.append({"table": name, "rows": rows, "version": dt.version(), "location": location})
    return out


def last_runs(cfg: Config, engine: str = "auto") -> list[dict]:
    """The latest `runs` row of each stage, oldest first (what `tables` shows)."""
    sql = (
        "SELECT stage, status, rows_in, rows_out, seconds, started_at FROM ("
        " SELECT *, row_number() OVER (PARTITION BY stage ORDER BY started_at DESC) AS n"
        " FROM runs) WHERE n = 1 ORDER BY started_at"
    )
    if engine != "spark" and local_tables(cfg) and "runs" not in delta_tables(cfg):
        return []
    try:
        return query(cfg, sql, engine).to_pylist()
    except Exception as e:  # no runs table yet (Spark: view missing)
        log.debug("no runs to show: %s", e)
        return []

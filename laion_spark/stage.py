"""What every stage returns, the registry of stages in pipeline order, and how one runs.

A stage is a function `run(spark, cfg, tables, *, <its own keyword options>) -> StageResult`
in `laion_spark/<stage>/stage.py` (the stage's name is its folder and its config section).
Jobs, the CLI and the demo all call it through `run_stage`, which checks the options the
stage takes, times it, logs its summary line and keeps the result as a row of `runs`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

# name -> "module:function"; order is the pipeline's order
STAGES: dict[str, str] = {
    "extract": "laion_spark.extract.stage:run",
    "download": "laion_spark.download.stage:run",
    "embed": "laion_spark.embed.stage:run",
    "score": "laion_spark.score.stage:run",
    "curate": "laion_spark.curate.stage:run",
    "index": "laion_spark.index.stage:run",
    "merge_index": "laion_spark.index.merge:merge_index",
    # CLIP-DPO (not part of `pipeline`: they run on an SFT pool, see docs/dpo.md)
    "dpo_generate": "laion_spark.dpo.generate:run",
    "dpo_score": "laion_spark.dpo.score:run",
    "dpo_select": "laion_spark.dpo.select:run",
}
# the config section each stage reads (its own name, but merge_index reads index:)
SECTIONS: dict[str, str] = {
    "merge_index": "index",
    "dpo_generate": "dpo",
    "dpo_score": "dpo",
    "dpo_select": "dpo",
}
# earlier stage names that still work: old name -> (stage, options, what to say)
RENAMED: dict[str, tuple[str, dict[str, Any], str]] = {
    "clip_filter": (
        "curate",
        {"filters": ["clip_filter"]},
        "the CLIP filter is now the curate filter clip_filter: `run curate` runs it with the "
        "others in curate.filters",
    ),
}


class StageOptionError(ValueError):
    """A stage was given an option it does not take."""


@dataclass
class StageResult:
    stage: str
    rows_in: int = 0
    rows_out: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)
    # set when the stage could not do its job (e.g. every input failed): the CLI exits 1
    error: str | None = None

    def line(self) -> str:
        status = ", ".join(f"{k}={v}" for k, v in sorted(self.by_status.items())) or "-"
        extra = "  " + " ".join(f"{k}={v}" for k, v in self.notes.items()) if self.notes else ""
        failed = f"  ERROR: {self.error}" if self.error else ""
        return (
            f"{self.stage:<9} in={self.rows_in:<7} out={self.rows_out:<7} "
            f"{self.seconds:7.1f}s  [{status}]{extra}{failed}"
        )


def stage_function(name: str) -> Callable[..., StageResult]:
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    module, func = STAGES[name].split(":")
    return getattr(importlib.import_module(module), func)


def stage_options(fn: Callable[..., Any]) -> list[str]:
    """The keyword options a stage function takes (everything after spark, cfg, tables)."""
    params = list(inspect.signature(fn).parameters.values())[3:]
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_options(name: str, fn: Callable[..., Any], options: dict[str, Any]) -> None:
    takes = stage_options(fn)
    unknown = sorted(set(options) - set(takes))
    if unknown:
        flag = unknown[0].replace("_", "-")
        offer = ", ".join(f"--{o.replace('_', '-')}" for o in takes) or "no options"
        raise StageOptionError(f"stage {name} does not take --{flag} (it takes {offer})")


def config_digest(cfg: Any) -> str:
    """16 hex of sha256 over the whole config: runs with equal digests used equal settings."""
    text = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def inputs_digest(tables, names: tuple[str, ...], settings: dict[str, Any]) -> str:
    """32 hex of sha256 over the data versions of tables `names` and `settings`: a stage
    that records it after a run (notes["state_digest"]) and finds it unchanged at the next
    would write what it wrote (curate, dpo_select)."""
    state = {"versions": {t: tables.data_version(t) for t in names}, "settings": settings}
    text = json.dumps(state, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def last_run_digest(tables, stage: str) -> str | None:
    """The state digest the newest run of `stage` recorded in `runs` (None: no such run, it
    failed, or it recorded none). Local tables are read here (delta-rs), others by Spark."""
    if not tables.exists("runs"):
        return None
    if tables.local("runs"):
        from laion_spark.lake import read_rows

        rows = read_rows(
            tables.location("runs"), ["started_at", "status", "notes"], equals=("stage", stage)
        ).to_pylist()
        if not rows:
            return None
        last = max(rows, key=lambda r: r["started_at"])
        status, digest = last["status"], dict(last["notes"] or []).get("state_digest")
    else:
        from pyspark.sql import functions as F

        got = (
            tables.read("runs")
            .where(F.col("stage") == F.lit(stage))
            .orderBy(F.col("started_at").desc())
            .select("status", F.col("notes").getItem("state_digest").alias("d"))
            .limit(1)
            .collect()
        )
        if not got:
            return None
        status, digest = got[0]["status"], got[0]["d"]
    if status != "ok" or digest is None:
        return None
    return json.loads(digest)


def resolve(name: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A stage name (old names map to what replaced them) and its options, checked."""
    if name in RENAMED:
        name, fixed, why = RENAMED[name]
        log.warning("%s", why)
        options = {**fixed, **options}
    check_options(name, stage_function(name), options)
    return name, options


def run_stage(name: str, spark, cfg, tables, **options) -> StageResult:
    """Run one stage: check its options, time it, log its line, record it in `runs`."""
    name, options = resolve(name, options)
    fn = stage_function(name)
    started = datetime.now(UTC)
    t0 = time.time()
    log.info("stage %s ...", name)
    try:
        with _progress(spark, name):
            result = fn(spark, cfg, tables, **options)
    except Exception as e:
        failed = StageResult(name, seconds=time.time() - t0, error=f"{type(e).__name__}: {e}")
        record_run(tables, cfg, failed, options, started)
        raise
    result.seconds = result.seconds or (time.time() - t0)
    log.info("%s", result.line())
    record_run(tables, cfg, result, options, started)
    return result


def _progress(spark, name: str):
    from contextlib import nullcontext

    from laion_spark import progress

    return progress.StageProgress(spark, name) if progress.ENABLED else nullcontext()


def record_run(tables, cfg, result: StageResult, options: dict[str, Any], started) -> None:
    """Keep `result` as a row of `runs` (a report or `status` reads it, never recounts)."""
    from laion_spark.tables import SPECS

    section = SECTIONS.get(result.stage, result.stage)
    stage_cfg = getattr(cfg, section, None)
    row = {
        "run_id": f"{started:%Y%m%dT%H%M%S}-{result.stage}-{uuid.uuid4().hex[:8]}",
        "stage": result.stage,
        "status": "failed" if result.error else "ok",
        "error_message": result.error,
        "rows_in": int(result.rows_in),
        "rows_out": int(result.rows_out),
        "by_status": {str(k): int(v) for k, v in result.by_status.items()},
        "notes": {str(k): json.dumps(v, default=str) for k, v in result.notes.items()},
        "options": json.dumps(options, sort_keys=True, default=str),
        "config_digest": config_digest(cfg),
        "stage_config": json.dumps(
            dataclasses.asdict(stage_cfg) if dataclasses.is_dataclass(stage_cfg) else None,
            sort_keys=True,
            default=str,
        ),
        "started_at": started,
        "seconds": float(result.seconds),
    }
    # one delta-rs commit here: no JVM for a run that had none (Spark when delta-rs cannot)
    if tables.local("runs") and tables.upsert_rows_local([row], "runs", update=False):
        return
    try:
        df = tables.spark.createDataFrame([row], SPECS["runs"].schema)
        tables.append(df, "runs")
    except Exception as e:  # the record must never turn a finished stage into a failure
        log.warning("could not record the run of %s in `runs`: %s", result.stage, e)


def print_summary(results: list[StageResult]) -> None:
    print("\n=== laion_spark run summary ===")
    for r in results:
        print("  " + r.line())

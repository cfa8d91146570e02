"""What every stage returns, and the registry of stages in pipeline order.

A stage is a function `run(spark, cfg, tables, **options) -> StageResult` in
`laion_spark/<folder>/stage.py`. Jobs, the CLI and the demo all call it through here.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# name -> "module:function"; order is the pipeline's order
STAGES: dict[str, str] = {
    "extract": "laion_spark.extract.stage:run",
    "download": "laion_spark.download.stage:run",
    "embed": "laion_spark.clip.stage:run",
    "clip_filter": "laion_spark.clip.filter:clip_filter",
    "score": "laion_spark.safety.stage:run",
    "curate": "laion_spark.curate.stage:run",
    "index": "laion_spark.index.stage:run",
    "merge_index": "laion_spark.index.merge:merge_index",
}


@dataclass
class StageResult:
    stage: str
    rows_in: int = 0
    rows_out: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # set when the stage did not do its job (the CLI exits 1)

    def line(self) -> str:
        status = ", ".join(f"{k}={v}" for k, v in sorted(self.by_status.items())) or "-"
        extra = "  " + " ".join(f"{k}={v}" for k, v in self.notes.items()) if self.notes else ""
        return (
            f"{self.stage:<9} in={self.rows_in:<7} out={self.rows_out:<7} "
            f"{self.seconds:7.1f}s  [{status}]{extra}"
        )


def stage_function(name: str) -> Callable[..., StageResult]:
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    module, func = STAGES[name].split(":")
    return getattr(importlib.import_module(module), func)


def run_stage(name: str, spark, cfg, tables, **options) -> StageResult:
    """Run one stage, timing it and printing its summary line."""
    t0 = time.time()
    print(f"[laion_spark] stage {name} ...", flush=True)
    result = stage_function(name)(spark, cfg, tables, **options)
    result.seconds = result.seconds or (time.time() - t0)
    print(f"[laion_spark] {result.line()}", flush=True)
    return result


def print_summary(results: list[StageResult]) -> None:
    print("\n=== laion_spark run summary ===")
    for r in results:
        print("  " + r.line())

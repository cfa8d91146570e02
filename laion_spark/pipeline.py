"""Run stages in pipeline order and print the per-stage summary."""

from __future__ import annotations

from laion_spark.stage import STAGES, StageResult, print_summary, run_stage


def run_pipeline(spark, cfg, tables, stages: list[str] | None = None, **options) -> list[StageResult]:
    """Run `stages` (default: all, in order). `options[stage]` are that stage's keyword options."""
    wanted = [s for s in STAGES if not stages or s in stages]
    results = []
    for name in wanted:
        results.append(run_stage(name, spark, cfg, tables, **options.get(name, {})))
    print_summary(results)
    return results

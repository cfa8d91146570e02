"""Time to report N rows: `laion-spark report` over a generated pool of N candidates.

    .venv/bin/python benchmarks/bench_report.py --rows 100000

Writes a generated pool (laion_spark.report.generated: candidates, images without bytes,
embeddings, scores, subsets, extract_stats, runs; no pipeline run) into a temporary Delta
workdir, then times `build_report` twice: a cold run (first Spark jobs of the session) and a
warm one, each with the caption probes over conf/audit/terms.txt and a `--compare` against
the `safety` subset. No index is built, so the index probes are skipped (they are k text
queries, not a scan). No peer tool writes such a report, so no ratio= is reported; the
step times (Spark aggregates vs rendering) are printed from report.json.
"""

from __future__ import annotations

import argparse
import time

from _common import print_result, scratch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--keep", action="store_true", help="keep the workdir (printed)")
    args = ap.parse_args()
    n = args.rows

    from laion_spark.config import load_config
    from laion_spark.report.build import build_report
    from laion_spark.report.generated import write_generated_pool
    from laion_spark.session import get_spark
    from laion_spark.tables import Tables

    with scratch("bench_report_", args.keep) as work:
        cfg = load_config("local", [f"workdir={work}/wd"])
        spark = get_spark(cfg)
        tables = Tables(spark, cfg)
        t0 = time.time()
        write_generated_pool(spark, cfg, tables, n=n)
        print(f"generated {n} rows in {time.time() - t0:.1f}s")
        times = []
        for label in ("cold", "warm"):
            t0 = time.time()
            result = build_report(spark, cfg, tables, compare="safety")
            times.append(time.time() - t0)
            gen = result.report["generated"]
            print(
                f"{label}: {times[-1]:.1f}s total, stats {gen['stats_seconds']:.1f}s, "
                f"steps {gen['step_seconds']} -> {result.files['index.html']}"
            )
        assert result.report["population"]["rows"] == n
        print_result(
            {
                "rows": n,
                "cold_s": f"{times[0]:.1f}",
                "warm_s": f"{times[1]:.1f}",
                "rows_per_s": f"{n / times[1]:.0f}",
            }
        )


if __name__ == "__main__":
    main()

"""`laion-spark` command line: one module per command group, registered explicitly here.

    laion-spark demo [--workdir DIR]       generated crawl -> every stage -> search, end to end
    laion-spark run STAGE [options]        one stage (extract, download, embed, score, ...)
    laion-spark pipeline                   every stage in order
    laion-spark sql "SELECT ..."           SQL over the Delta tables (each table is a view)
    laion-spark tables                     tables with row counts and Delta versions
    laion-spark report [--subset NAME]     dataset report: index.html, dataset card, report.json
    laion-spark merge-index | search | serve | takedown | train-head | import | export

Every command takes `--conf NAME|PATH` and `--set key=value`. The jobs in jobs/ are this
same parser (`job_main`), so spark-submit and the CLI accept the same options.
"""

from __future__ import annotations

from laion_spark.cli.main import build_parser, job_main, main

__all__ = ["build_parser", "job_main", "main"]

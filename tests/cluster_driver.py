"""A spark-submit driver for the fault tests: extract -> download -> embed -> index, each run
exactly as `spark-submit jobs/<stage>.py` runs it (`job_main`), one after the other in one
Spark application, announcing each stage on stdout so the test can aim its kills at one:

    STAGE <name> start <epoch seconds>
    STAGE <name> end <epoch seconds> <exit code>

    spark-submit --master 'local-cluster[2,1,1024]' tests/cluster_driver.py WORKDIR CRAWL_FILE \
        [--set k=v ...]
"""

from __future__ import annotations

import sys
import time

from laion_spark.cli import job_main

STAGES = ("extract", "download", "embed", "index")


def main(argv: list[str]) -> int:
    workdir, crawl, sets = argv[0], argv[1], argv[2:]
    common = ["--set", "spark.master=null", "--set", f"workdir={workdir}", *sets]
    for stage in STAGES:
        print(f"STAGE {stage} start {time.time():.3f}", flush=True)
        rc = job_main(stage, [*common, *(["--inputs", crawl] if stage == "extract" else [])])
        print(f"STAGE {stage} end {time.time():.3f} {rc}", flush=True)
        if rc != 0:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

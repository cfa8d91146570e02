"""A spark-submit driver for the fault tests: download -> embed -> index over the candidates
already in `<workdir>/tables`, one stage after the other, announcing each on stdout so the
test can aim its kills at one stage:

    STAGE <name> start <epoch seconds>
    STAGE <name> end <epoch seconds> <rows_out> <by_status as JSON>

It needs `candidates` (with URLs it can fetch) already written; the test writes them
and serves the images on 127.0.0.1.
"""

from __future__ import annotations

import json
import sys
import time

from laion_spark.config import load_config
from laion_spark.session import get_spark
from laion_spark.stage import run_stage
from laion_spark.tables import Tables

STAGES = ("download", "embed", "index")


def main(argv: list[str]) -> int:
    workdir, sets = argv[0], [a for a in argv[1:] if a != "--set"]
    cfg = load_config("local", ["spark.master=null", f"workdir={workdir}", *sets])
    spark = get_spark(cfg)
    tables = Tables(spark, cfg)
    for stage in STAGES:
        print(f"STAGE {stage} start {time.time():.3f}", flush=True)
        r = run_stage(stage, spark, cfg, tables)
        if r.error is not None:
            print(f"STAGE {stage} failed: {r.error}", flush=True)
            return 1
        print(
            f"STAGE {stage} end {time.time():.3f} {r.rows_out} {json.dumps(r.by_status)}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

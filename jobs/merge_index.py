"""spark-submit entry point of the merge_index stage: spark-submit jobs/merge_index.py --conf NAME --set k=v

Same options as `laion-spark run merge_index` (laion_spark.cli.job_main)."""

import sys

from laion_spark.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("merge_index"))

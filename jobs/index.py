"""spark-submit entry point of the index stage: spark-submit jobs/index.py --conf NAME --set k=v

Same options as `laion-spark run index` (laion_spark.cli.job_main)."""

import sys

from laion_spark.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("index"))

"""spark-submit entry point of the curate stage: spark-submit jobs/curate.py --conf NAME --set k=v

Same options as `laion-spark run curate` (laion_spark.cli.job_main)."""

import sys

from laion_spark.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("curate"))

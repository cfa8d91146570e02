"""spark-submit entry point of the clip_filter stage: spark-submit jobs/clip_filter.py --conf NAME --set k=v

Same options as `laion-spark run clip_filter` (laion_spark.cli.job_main)."""

import sys

from laion_spark.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("clip_filter"))

"""spark-submit entry point of the extract stage: spark-submit jobs/extract.py --conf NAME --set k=v

Same options as `laion-spark run extract` (laion_spark.cli.job_main)."""

import sys

from laion_spark.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("extract"))

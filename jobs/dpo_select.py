"""spark-submit entry point of the dpo_select stage: spark-submit jobs/dpo_select.py --conf NAME --set k=v

Same options as `laion-spark run dpo_select` (laion_spark.cli.job_main)."""

import sys

from laion_spark.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("dpo_select"))

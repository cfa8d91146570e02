"""spark-submit entry point of the index stage: spark-submit jobs/index.py --conf NAME --set k=v"""

import sys

from laion_spark.jobs import stage_job

if __name__ == "__main__":
    sys.exit(stage_job("index"))

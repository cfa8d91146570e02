"""spark-submit entry point of the curate stage: spark-submit jobs/curate.py --conf NAME --set k=v"""

import sys

from laion_spark.jobs import stage_job

if __name__ == "__main__":
    sys.exit(stage_job("curate"))

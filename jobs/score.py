"""spark-submit entry point of the score stage: spark-submit jobs/score.py --conf NAME --set k=v"""

import sys

from laion_spark.jobs import stage_job

if __name__ == "__main__":
    sys.exit(stage_job("score"))

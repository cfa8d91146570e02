"""spark-submit entry point of the extract stage: spark-submit jobs/extract.py --conf NAME --set k=v"""

import sys

from laion_spark.jobs import stage_job

if __name__ == "__main__":
    sys.exit(stage_job("extract"))

"""spark-submit entry point of the CLIP filter: spark-submit jobs/clip_filter.py --conf NAME --set k=v"""

import sys

from laion_spark.jobs import stage_job

if __name__ == "__main__":
    sys.exit(stage_job("clip_filter"))

"""spark-submit entry point of the index merge: spark-submit jobs/merge_index.py --conf NAME --set k=v

Merges every committed shard of index.name into one memory-mappable index and records
recall@10, factory, sizes and build time in the `index_manifest` table.
"""

import sys

from laion_spark.jobs import stage_job

if __name__ == "__main__":
    sys.exit(stage_job("merge_index"))

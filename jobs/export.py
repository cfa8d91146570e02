"""spark-submit entry point of export (and of reshard / import of WebDataset pools):

    spark-submit jobs/export.py --subset clip_filter --format webdataset --to s3://bucket/shards
    spark-submit jobs/export.py reshard --uids s3://b/subset.npy --pool s3://b/pool --to s3://b/out

Same options as `laion-spark export` (laion_spark.cli); a first word `reshard` or `import`
runs that command instead."""

import sys

from laion_spark.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    command = argv[0] if argv and argv[0] in ("reshard", "import", "export") else None
    sys.exit(main([command, *argv[1:]] if command else ["export", *argv]))

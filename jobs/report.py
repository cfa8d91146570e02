"""spark-submit entry point of the dataset report: spark-submit jobs/report.py --conf NAME --out DIR

Same options as `laion-spark report` (laion_spark.cli.main): --subset, --compare, --as-of,
--out, --no-probes, --set k=v."""

import sys

from laion_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))

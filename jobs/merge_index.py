"""spark-submit entry point of the index merge: spark-submit jobs/merge_index.py --conf NAME --set k=v

Merges every committed shard of index.name into one memory-mappable index and records
recall@10, factory, sizes and build time in the `index_manifest` table.
"""

import argparse
import sys

from laion_spark.config import load_config
from laion_spark.settings import ConfigError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="laion_spark index merge job")
    p.add_argument("--conf", default="local", help="config name in conf/ or a YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.conf, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    from laion_spark.index.merge import merge_index
    from laion_spark.session import get_spark
    from laion_spark.tables import Tables

    spark = get_spark(cfg)
    result = merge_index(spark, cfg, Tables(spark, cfg))
    print(f"[laion_spark] {result.line()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

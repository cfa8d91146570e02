"""`python -m laion_spark.cli ...` is `laion-spark ...`."""

import sys

from laion_spark.cli.main import main

sys.exit(main())

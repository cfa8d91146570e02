"""The local driver JVM's fixed cost: launch -> SparkSession ready, then the first Delta read
and anti-join of two tables, with the class archive + quick JIT (the defaults) and without
them (`spark.class_archive=false spark.quick_jit=false`). Each run is a fresh process; the
variants alternate.

    .venv/bin/python benchmarks/bench_jvm_start.py --workdir /tmp/demo --repeat 3

`--workdir`: a demo's workdir (`laion-spark demo --workdir DIR` makes one): its
`candidates` and `images` tables are read. Ends with one `result:` line (medians).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
t0 = time.time()
from laion_spark.config import load_config
from laion_spark.session import get_spark
workdir, overrides = sys.argv[1], sys.argv[2:]
spark = get_spark(load_config("local", [f"workdir={workdir}", *overrides]))
ready = time.time() - t0
t = time.time()
cand = spark.read.format("delta").load(f"{workdir}/tables/candidates").select("sample_id")
imgs = spark.read.format("delta").load(f"{workdir}/tables/images").select("sample_id")
cand.join(imgs, "sample_id", "left_anti").count()
print(json.dumps({"ready_s": ready, "first_query_s": time.time() - t}))
"""

VARIANTS = {
    "on": [],
    "off": ["spark.class_archive=false", "spark.quick_jit=false"],
}


def one(workdir: str, overrides: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, workdir, *overrides],
        capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True, help="a demo's workdir (its tables are read)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if not os.path.isdir(os.path.join(args.workdir, "tables", "candidates")):
        sys.exit(f"{args.workdir}: no tables/candidates (run `laion-spark demo --workdir` first)")
    runs: dict[str, list[dict]] = {k: [] for k in VARIANTS}
    for i in range(args.repeat):
        order = list(VARIANTS) if i % 2 == 0 else list(reversed(VARIANTS))
        for name in order:
            r = one(args.workdir, VARIANTS[name])
            runs[name].append(r)
            print(f"run {i + 1} {name}: ready {r['ready_s']:.2f} s, first query "
                  f"{r['first_query_s']:.2f} s", flush=True)
    fields = []
    med: dict[str, float] = {}
    for name, rs in runs.items():
        for key in ("ready_s", "first_query_s"):
            vals = [r[key] for r in rs]
            med[f"{key}_{name}"] = statistics.median(vals)
            fields.append(f"{key.removesuffix('_s')}_{name}_s={med[f'{key}_{name}']:.2f}")
            fields.append(f"{key.removesuffix('_s')}_{name}_range={min(vals):.2f}-{max(vals):.2f}")
    fields.append(f"ready_speedup={med['ready_s_off'] / med['ready_s_on']:.2f}")
    fields.append(f"first_query_speedup={med['first_query_s_off'] / med['first_query_s_on']:.2f}")
    print(f"result: runs={args.repeat} " + " ".join(fields))


if __name__ == "__main__":
    main()

"""Everyday commands: how long a user waits for the demo and for the commands they type
most, each timed from launch to exit as a separate process (interpreter, imports, JVM when
one starts, the work, shutdown).

    .venv/bin/python benchmarks/bench_everyday.py --pages 200 --repeat 3
    .venv/bin/python benchmarks/bench_everyday.py --workdir demo-workdir --repeat 3  # reuse a demo

Timed, `--repeat` times each, median and range:
  * demo_cold: `laion-spark demo` into a fresh workdir (models already in the user cache:
    tiny-clip and the demo heads are trained once per machine, not per demo);
  * demo_warm: `laion-spark demo` again on the same workdir (every stage finds its work
    done; the crawl, the server and the model loads still happen);
  * sql / tables: `laion-spark sql "SELECT status, count(*) ..."` and `laion-spark tables`
    with the default engine (DataFusion over the Delta tables, no JVM) and with
    `--engine spark` (what both did before: a Spark session, Spark SQL);
  * status: `laion-spark status` (pending rows per stage, no JVM);
  * noop_score / noop_curate: `laion-spark run score|curate` with nothing to do (a Spark
    session starts; the stage finds out there is no work).
Ends with one line `result: name=seconds ...` (medians).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import print_result  # noqa: E402

CLI = str(Path(sys.executable).with_name("laion-spark"))
SQL = "SELECT status, count(*) AS n FROM images GROUP BY status ORDER BY n DESC"


def timed(args: list[str], workdir: str) -> float:
    """Seconds from launch to exit of `laion-spark ARGS --set workdir=WORKDIR` (must exit 0)."""
    cmd = [CLI, *args]
    if args[0] != "demo":
        cmd += ["--set", f"workdir={workdir}"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    s = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return s


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} s ({min(xs):.2f}-{max(xs):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages", type=int, default=200, help="demo pages (make demo: 200)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", help="an existing demo workdir: skip demo_cold")
    a = ap.parse_args()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    tmp = tempfile.mkdtemp(prefix="bench_everyday_")
    times: dict[str, list[float]] = {}
    try:
        workdir = a.workdir
        if workdir is None:
            for i in range(a.repeat):
                wd = f"{tmp}/demo{i}"
                s = timed(["demo", "--workdir", wd, "--pages", str(a.pages)], wd)
                times.setdefault("demo_cold", []).append(s)
                print(f"demo cold, run {i + 1}: {s:.1f} s", flush=True)
                workdir = wd
        wd_arg = str(Path(workdir).resolve())
        for i in range(a.repeat):
            s = timed(["demo", "--workdir", wd_arg, "--pages", str(a.pages)], wd_arg)
            times.setdefault("demo_warm", []).append(s)
            print(f"demo warm, run {i + 1}: {s:.1f} s", flush=True)
        commands = {
            "sql": ["sql", SQL],
            "sql_spark": ["sql", SQL, "--engine", "spark"],
            "tables": ["tables"],
            "tables_spark": ["tables", "--engine", "spark"],
            "status": ["status"],
            "noop_score": ["run", "score"],
            "noop_curate": ["run", "curate"],
        }
        for _ in range(a.repeat):  # interleaved: drift hits every command alike
            for name, args in commands.items():
                times.setdefault(name, []).append(timed(args, wd_arg))
        for name, xs in times.items():
            print(f"{name:<13} {spread(xs)}")
        fields: dict[str, object] = {"pages": a.pages, "runs": a.repeat}
        fields.update({f"{k}_s": f"{statistics.median(v):.2f}" for k, v in times.items()})
        fields["sql_speedup"] = (
            f"{statistics.median(times['sql_spark']) / statistics.median(times['sql']):.1f}"
        )
        fields["tables_speedup"] = (
            f"{statistics.median(times['tables_spark']) / statistics.median(times['tables']):.1f}"
        )
        print_result(fields)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

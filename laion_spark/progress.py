"""One progress line per running stage, in place of Spark's console bar.

    with StageProgress(spark, "embed"):
        ...  # the stage's Spark jobs

A daemon thread polls `SparkContext.statusTracker()` (the driver's own bookkeeping: no extra
Spark job) and shows how many Spark jobs the stage has run, the running job's tasks done,
that job's ETA at its task rate, and the elapsed time. Spark reports progress per task, not
per row, so the line counts tasks; a stage that knows its row count says it
(`StageProgress.rows`). On a terminal
the line is redrawn in place; when stderr is not a terminal (CI logs, files) it becomes a
plain line every `log_every` seconds, so logs stay readable.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

# off for library use (notebooks, tests); the CLI turns it on
ENABLED = False


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class StageProgress:
    _active: StageProgress | None = None  # the stage running now (stages run one at a time)

    def __init__(
        self,
        spark,
        stage: str,
        stream: TextIO | None = None,
        interval: float = 0.5,
        log_every: float = 15.0,
    ):
        self.spark = spark
        self.stage = stage
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval
        self.log_every = log_every
        self.total_rows: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen_jobs: set[int] = set()
        self._job_started: dict[int, float] = {}  # job ordinal -> elapsed when first seen
        self._drawn = False
        self.lines: list[str] = []  # what was shown (tests read it)

    @classmethod
    def rows(cls, n: int) -> None:
        """A stage says how many rows it is working on (shown on its line)."""
        if cls._active is not None:
            cls._active.total_rows = int(n)

    def __enter__(self) -> StageProgress:
        StageProgress._active = self
        self._t0 = time.time()
        self._thread = threading.Thread(target=self._run, name="laion-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self.tty and self._drawn:
            self.stream.write("\r\033[K")  # the stage's summary line replaces the bar
            self.stream.flush()
        StageProgress._active = None

    def snapshot(self) -> tuple[int, int, int]:
        """(Spark jobs run so far in this stage, tasks done, tasks) of the jobs running now."""
        if not getattr(self.spark, "started", True):  # a lazy session not started: no jobs
            return len(self._seen_jobs), 0, 0
        tracker = self.spark.sparkContext.statusTracker()
        done = total = 0
        for job_id in tracker.getActiveJobsIds():
            self._seen_jobs.add(job_id)
            job = tracker.getJobInfo(job_id)
            for stage_id in job.stageIds if job is not None else ():
                info = tracker.getStageInfo(stage_id)
                if info is not None:
                    done += info.numCompletedTasks
                    total += info.numTasks
        return len(self._seen_jobs), done, total

    def line(self) -> str:
        jobs, done, total = self.snapshot()
        elapsed = time.time() - self._t0
        parts = [f"[laion_spark] {self.stage}"]
        if self.total_rows is not None:
            parts.append(f"{self.total_rows} rows")
        if getattr(self.spark, "started", True):
            parts.append(f"Spark job {jobs}")
        else:  # the stage runs in this process (a lazy session never started)
            parts.append("in process")
        if total:
            parts.append(f"tasks {done}/{total}")
            if 0 < done < total:  # the running job's remaining time at its task rate
                spent = elapsed - self._job_started.get(jobs, 0.0)
                parts.append(f"job ETA ~{_fmt_seconds(spent / done * (total - done))}")
        self._job_started.setdefault(jobs, elapsed)
        parts.append(_fmt_seconds(elapsed))
        return " · ".join(parts)

    def _run(self) -> None:
        last_log = time.time()
        while not self._stop.wait(self.interval):
            try:
                text = self.line()
            except Exception:  # the session is stopping: nothing to show
                return
            if self.tty:
                self.stream.write("\r\033[K" + text)
                self.stream.flush()
                self._drawn = True
                self.lines.append(text)
            elif time.time() - last_log >= self.log_every:
                self.stream.write(text + "\n")
                self.stream.flush()
                self.lines.append(text)
                last_log = time.time()

"""A running service follows the tables: new takedowns within seconds, new merged indexes.

A daemon thread polls, every serve.takedown_poll_seconds, the Delta version of the
takedowns table (one delta-rs log listing, milliseconds). When it changed, the searcher
re-reads the table and hides what it lists: a takedown is honoured without a restart,
about one poll interval after its commit (the takedown records the request before it
deletes anything). The index_manifest version is polled the same way; when its latest
merged index differs from the one served (a merge, or a purge that replaced the files),
a new Searcher is opened beside the old one and swapped in, so the service stops mapping
files a purge deleted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from laion_spark.index.search import Searcher, takedowns_version

log = logging.getLogger(__name__)


def _version(lake, name: str) -> int | None:
    if name == "takedowns":
        return takedowns_version(lake)
    if lake.cfg.tables.database:
        return lake.tables.version(name)
    try:
        from deltalake import DeltaTable

        return int(DeltaTable(lake.location(name)).version())
    except Exception:
        return None


class Watcher:
    def __init__(
        self,
        get: Callable[[], Searcher],
        swap: Callable[[Searcher], None],
        interval_s: float,
        spark=None,
    ):
        self.get = get
        self.swap = swap
        self.interval_s = interval_s
        self.spark = spark
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.manifest_seen = _version(get().lake, "index_manifest")
        self.refreshes = 0
        self.reloads = 0

    def start(self) -> Watcher:
        self._thread = threading.Thread(target=self._run, name="laion-spark-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception:  # a transient read error must not end the watcher
                log.exception("takedown/index poll failed; retrying")

    def poll(self) -> None:
        searcher = self.get()
        v = _version(searcher.lake, "takedowns")
        if v is not None and v != searcher.takedowns_seen:
            hidden = searcher.refresh_takedowns(v)
            self.refreshes += 1
            log.info("takedowns version %s applied: %d indexed samples hidden", v, hidden)
        m = _version(searcher.lake, "index_manifest")
        if m is not None and m != self.manifest_seen:
            self.manifest_seen = m
            self._maybe_reload(searcher)

    def _maybe_reload(self, old: Searcher) -> None:
        cfg = old.cfg
        name = cfg.serve.index or cfg.index.name
        man = old.lake.read("index_manifest", ["index_name", "shard", "kind", "created_at"])
        if man is None:
            return
        man = man[(man["index_name"] == name) & (man["kind"] == "merged")]
        if man.empty:
            return
        latest = man.sort_values("created_at").iloc[-1]["shard"]
        if latest == old.manifest.get("shard"):
            return
        new = Searcher.open(self.spark, cfg, old.lake.tables)
        new._clip = old._clip  # the model is the same; keep it warm
        self.swap(new)
        self.reloads += 1
        log.info("serving the new merged index %s (%d vectors)", latest, new.ntotal)

"""Where reports live: `<report.root>/<UTC time>/` by default, and which one is the latest.

    latest_report(cfg)   # -> ".../reports/20261130T120000Z/index.html" or None

`serve` links to `latest_report(cfg)`. A report folder counts once its index.html and
report.json are both written (report.json is written first, index.html after it).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from laion_spark import storage
from laion_spark.config import Config


def reports_root(cfg: Config) -> str:
    return (cfg.report.root or storage.join(cfg.workdir_path, "reports")).rstrip("/")


def default_out(cfg: Config) -> str:
    """A new folder under the reports root, named by the UTC time (sorts by age)."""
    return storage.join(reports_root(cfg), datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ"))


def latest_report(cfg: Config) -> str | None:
    """Path of the newest complete report's index.html under the reports root, or None.

    Newest by report.json's `generated.at`, then by folder name; folders without both
    files (a report being written, or unrelated folders) are skipped."""
    root = reports_root(cfg)
    try:
        fs, base = storage.fs_path(root)
        if not fs.isdir(base):
            return None
        folders = [p for p in fs.ls(base, detail=False) if fs.isdir(p)]
    except (OSError, ValueError):
        return None
    best: tuple[str, str] | None = None
    for folder in folders:
        name = folder.rstrip("/").rsplit("/", 1)[-1]
        html, meta = storage.join(root, name, "index.html"), storage.join(root, name, "report.json")
        if not (storage.exists(html) and storage.exists(meta)):
            continue
        try:
            at = json.loads(storage.read_bytes(meta))["generated"]["at"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        rank = (str(at), name)
        if best is None or rank > best:
            best, path = rank, html
    return path if best is not None else None

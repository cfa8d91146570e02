"""Paths in `index_manifest`: relative to the workdir, so a copied or moved workdir serves
its own index files.

    to_manifest(cfg, "/data/wd/indexes/main/shards/a.index")  -> "indexes/main/shards/a.index"
    resolve(cfg, "indexes/main/shards/a.index")                -> "<workdir>/indexes/main/..."

Files under the workdir are stored relative to it (on cloud storage the workdir is a URI,
so `s3://bucket/wd` + relative path is again a URI); files elsewhere keep their absolute
path or URI. Manifests written before this (absolute paths) are still read: when the
same file exists under this workdir's `indexes/` folder, that copy is used, so a copied
workdir never silently serves the original's files.
"""

from __future__ import annotations

import logging

from laion_spark import storage
from laion_spark.config import Config

log = logging.getLogger(__name__)
_MARKER = "/indexes/"


def is_relative(path: str) -> bool:
    return bool(path) and "://" not in path and not path.startswith(("/", "dbfs:"))


def to_manifest(cfg: Config, path: str) -> str:
    """What the manifest stores for `path`: relative when under the workdir."""
    root = cfg.workdir_path.rstrip("/") + "/"
    if path and path.startswith(root):
        return path[len(root) :]
    return path


def resolve(cfg: Config, stored: str | None) -> str | None:
    """The file a manifest path names, for this config's workdir."""
    if not stored:
        return stored
    if is_relative(stored):
        return storage.join(cfg.workdir_path, stored)
    at = stored.rfind(_MARKER)
    if at >= 0:
        here = storage.join(cfg.workdir_path, stored[at + 1 :])
        if here != stored and storage.exists(here):
            log.debug("manifest path %s read from this workdir: %s", stored, here)
            return here
    return stored

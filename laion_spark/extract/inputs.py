"""Input lists: plain paths/URLs, and Common Crawl `*.paths.gz` listings that expand."""

from __future__ import annotations

import gzip
import io

from laion_spark.extract.reader import open_input


def is_listing(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.endswith((".paths.gz", ".paths", ".txt", ".txt.gz"))


def read_listing(path: str, prefix: str = "") -> list[str]:
    """Entries of a listing; relative entries (crawl-data/...) get `prefix` in front."""
    with open_input(path) as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.GzipFile(fileobj=io.BytesIO(data)).read()
    out = []
    for line in data.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "://" not in line and not line.startswith("/") and prefix:
            line = prefix.rstrip("/") + "/" + line
        out.append(line)
    return out


def expand_inputs(inputs: list[str], prefix: str = "") -> list[str]:
    """Files to extract, in order, without repeats; listings replaced by their entries."""
    seen: set[str] = set()
    files: list[str] = []
    for item in inputs:
        entries = read_listing(item, prefix) if is_listing(item) else [item]
        for e in entries:
            if e not in seen:
                seen.add(e)
                files.append(e)
    return files

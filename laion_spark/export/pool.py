"""Read WebDataset pools in img2dataset / DataComp layout, on any filesystem.

A pool is a folder of `{shard}.tar` files; a tar holds `{key}.{ext}` members (an image
as jpg/png/webp, `txt` caption, `json` metadata), grouped by key as WebDataset groups
them (key = member path up to the first dot of its file name). Beside each tar,
img2dataset writes `{shard}.parquet` with one row per sample it tried (url, caption, key,
status, error_message, and DataComp's uid), including the failures that are not in the tar.

Shards are untrusted input: members over `max_member_bytes` are skipped with a status,
and a truncated or corrupt tar yields what it could read plus one error for the shard.
"""

from __future__ import annotations

import json
import re
import tarfile
from dataclasses import dataclass, field
from typing import Any

from laion_spark import storage

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_MEMBER = re.compile(r"^((?:.*/|)[^./][^.]*)\.([^/]+)$")


def list_shards(path: str) -> list[str]:
    """The `.tar` shards of a pool: a folder (searched recursively), a glob, or one tar."""
    fs, p = storage.fs_path(path)
    if any(c in p for c in "*?["):
        found = fs.glob(p)
    elif p.endswith(".tar"):
        found = [p] if fs.exists(p) else []
    else:
        found = [f for f in fs.find(p) if f.endswith(".tar")]
    names = sorted(f for f in found if not storage.is_tmp_name(f))
    if storage.is_local(path):
        return names
    return [fs.unstrip_protocol(f) for f in names]


@dataclass
class PoolSample:
    key: str
    index: int  # position of the sample in its tar
    files: dict[str, bytes] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # members left out, with why

    def image(self) -> tuple[str | None, bytes | None]:
        for ext in IMAGE_EXTS:
            if ext in self.files:
                return ext, self.files[ext]
        return None, None

    def meta(self) -> dict[str, Any]:
        raw = self.files.get("json")
        if not raw:
            return {}
        try:
            doc = json.loads(raw)
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    def caption(self) -> str | None:
        if "txt" in self.files:
            return self.files["txt"].decode("utf-8", errors="replace")
        return self.meta().get("caption")


@dataclass
class TarRead:
    samples: list[PoolSample]
    error: str | None = None  # the tar could not be read to its end


def read_tar(path: str, max_member_bytes: int) -> TarRead:
    """Every sample of one tar (streamed: works on object stores without seeking)."""
    out: list[PoolSample] = []
    error = None
    try:
        fs, p = storage.fs_path(path)
        with fs.open(p, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                m = _MEMBER.match(member.name)
                if m is None:
                    continue
                key, ext = m.group(1), m.group(2).lower()
                if not out or out[-1].key != key:
                    out.append(PoolSample(key, len(out)))
                if member.size > max_member_bytes:
                    out[-1].skipped.append(
                        f"{member.name}: {member.size} bytes, over {max_member_bytes}"
                    )
                    continue
                fh = tf.extractfile(member)
                out[-1].files[ext] = fh.read() if fh is not None else b""
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        error = f"{path}: {type(e).__name__}: {e}"[:500]
    return TarRead(out, error)


def sibling_parquet(tar_path: str) -> list[dict[str, Any]]:
    """Rows of the `{shard}.parquet` beside a tar ([] when there is none or it is unreadable)."""
    import pyarrow.parquet as pq

    path = tar_path[: -len(".tar")] + ".parquet"
    try:
        if not storage.exists(path):
            return []
        fs, p = storage.fs_path(path)
        with fs.open(p, "rb") as f:
            table = pq.read_table(f)
        keep = [c for c in table.column_names if c not in ("jpg", "png", "webp", "image")]
        return table.select(keep).to_pylist()
    except Exception:  # a broken parquet beside a good tar: the tar's own json still counts
        return []

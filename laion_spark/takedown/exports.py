"""Purge's pass over files written by `laion-spark export`: rewrite shards without the
purged samples, or list what it could not rewrite.

The export command records what it wrote in an `exports` Delta table. Its shape is read
defensively, since it is owned by the export code: one row per export with an id
(`export_id`), a target folder or URI (`target`, `target_uri`, `uri` or `to`) and the
shard files (`shards`, `shard_paths`, `paths` or `files`: an array of paths, absolute or
relative to the target). No shard column: every file under the target is considered. No
`exports` table: nothing to do, and the purge record says so.

A sample is recognised in a shard by its sample_id (also as `key`/`uid`, DataComp's uid
of a sample not imported from DataComp is its sample_id), the sha256 of its normalised URL,
or the sha256 of an image file. By format:
- `.tar` (WebDataset): the members of every matching key are dropped, the tar rewritten;
- `.parquet`: matching rows dropped; `.npy` arrays whose rows follow a rewritten parquet of
  the same shard number (LAION's img_emb_N.npy / text_emb_N.npy beside metadata_N.parquet)
  lose the same rows; uid arrays (dtype u8,u8) lose the matching uids;
- anything else holding no recognisable sample (json stats, manifests) is left alone.
Counts in an export's own manifest are not rewritten; the purge record lists every file
it rewrote or deleted.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import tarfile

import numpy as np

from laion_spark import storage
from laion_spark.takedown.rules import url_hash

log = logging.getLogger(__name__)
TARGET_COLUMNS = ("target", "target_uri", "uri", "to")
SHARD_COLUMNS = ("shards", "shard_paths", "paths", "files")


class Needles:
    """What identifies a purged sample in exported files."""

    def __init__(self, sample_ids, url_hashes, image_sha256):
        self.ids = {s.lower() for s in sample_ids if s}
        self.url_hashes = set(url_hashes)
        self.sha256 = {h.lower() for h in image_sha256 if h}

    def matches_record(self, rec: dict) -> bool:
        for key in ("sample_id", "uid", "key", "__key__"):
            v = rec.get(key)
            if isinstance(v, str) and v.lower() in self.ids:
                return True
        url = rec.get("url")
        return isinstance(url, str) and bool(url) and url_hash(url) in self.url_hashes

    def matches_bytes(self, data: bytes) -> bool:
        return hashlib.sha256(data).hexdigest() in self.sha256


def read_exports(tables) -> list[dict] | None:
    """Rows of the `exports` table as dicts, None when there is no such table."""
    if not tables.exists("exports"):
        return None
    from laion_spark.tables import SPECS

    if "exports" in SPECS:
        df = tables.read("exports")
    else:  # the export code's table, not (yet) declared here
        df = tables.spark.read.format("delta").load(tables.location("exports"))
    return [r.asDict(recursive=True) for r in df.collect()]


def export_files(row: dict) -> tuple[str | None, list[str]]:
    """(target, shard files) of one `exports` row."""
    target = next((row[c] for c in TARGET_COLUMNS if row.get(c)), None)
    shards = next((row[c] for c in SHARD_COLUMNS if row.get(c)), None)
    if isinstance(shards, str):
        try:
            shards = json.loads(shards)
        except ValueError:
            shards = [shards]
    if shards:
        files = [
            p if (target is None or "://" in p or p.startswith("/")) else storage.join(target, p)
            for p in shards
        ]
        return target, [str(f) for f in files]
    if target and storage.exists(target):
        fs, p = storage.fs_path(target)
        proto = target.split("://", 1)[0] + "://" if "://" in target else ""
        return target, sorted(proto + f for f in fs.find(p))
    return target, []


def _shard_number(path: str) -> str | None:
    m = re.search(r"(\d+)\D*$", path.rsplit("/", 1)[-1].split(".", 1)[0])
    return m.group(1) if m else None


def _rewrite_tar(data: bytes, needles: Needles) -> tuple[bytes | None, int]:
    """(new tar bytes or None when untouched, samples dropped)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = [(m, tf.extractfile(m).read() if m.isfile() else None) for m in tf.getmembers()]
    bad: set[str] = set()
    for m, body in members:
        if body is None:
            continue
        base = m.name.rsplit("/", 1)[-1]
        key = m.name[: len(m.name) - len(base)] + base.split(".", 1)[0]
        if needles.matches_record({"key": base.split(".", 1)[0]}) or needles.matches_bytes(body):
            bad.add(key)
        elif base.endswith(".json"):
            try:
                rec = json.loads(body)
            except ValueError:
                continue
            if isinstance(rec, dict) and needles.matches_record(rec):
                bad.add(key)
    if not bad:
        return None, 0
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tf:
        for m, body in members:
            base = m.name.rsplit("/", 1)[-1]
            key = m.name[: len(m.name) - len(base)] + base.split(".", 1)[0]
            if key in bad:
                continue
            tf.addfile(m, io.BytesIO(body) if body is not None else None)
    return out.getvalue(), len(bad)


def _rewrite_parquet(data: bytes, needles: Needles) -> tuple[bytes | None, list[int]]:
    """(new parquet bytes or None, positions of the dropped rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    cols = [c for c in ("sample_id", "uid", "key", "__key__", "url") if c in table.column_names]
    if not cols:
        return None, []
    recs = table.select(cols).to_pylist()
    drop = [i for i, r in enumerate(recs) if needles.matches_record(r)]
    if not drop:
        return None, []
    keep = np.ones(len(recs), bool)
    keep[drop] = False
    out = io.BytesIO()
    pq.write_table(table.filter(pa.array(keep)), out)
    return out.getvalue(), drop


def _rewrite_npy(data: bytes, needles: Needles, drop_rows: list[int] | None):
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    if arr.dtype == np.dtype("u8,u8"):  # DataComp uid array: 128-bit uids as two halves
        ids = {int(s[:16], 16) << 64 | int(s[16:32], 16) for s in needles.ids if len(s) == 32}
        keep = np.array([(int(a) << 64 | int(b)) not in ids for a, b in arr.tolist()], bool)
    elif drop_rows and arr.ndim >= 1:
        keep = np.ones(arr.shape[0], bool)
        keep[[i for i in drop_rows if i < arr.shape[0]]] = False
    else:
        return None
    if keep.all():
        return None
    out = io.BytesIO()
    np.save(out, arr[keep], allow_pickle=False)
    return out.getvalue()


def purge_exports(tables, needles: Needles) -> tuple[list[str], list[str]]:
    """Rewrite every recorded export file that holds a purged sample.

    Returns (entries for the purge record, notes). An entry is "rewritten: <path> (-n)",
    "deleted: <path>" (a shard left empty) or "listed: <path> (<why>)".
    """
    rows = read_exports(tables)
    if rows is None:
        return [], ["no exports table: no exports to purge"]
    entries: list[str] = []
    for row in rows:
        target, files = export_files(row)
        dropped_rows: dict[str, list[int]] = {}  # shard number -> rows dropped from parquet
        npys = []
        for path in files:
            if not storage.exists(path):
                entries.append(f"listed: {path} (missing)")
                continue
            low = path.lower()
            if low.endswith(".npy"):
                npys.append(path)  # after the parquet files, whose dropped rows they follow
                continue
            try:
                data = storage.read_bytes(path)
                if low.endswith(".tar"):
                    new, n = _rewrite_tar(data, needles)
                    empty = (
                        new is not None and not tarfile.open(fileobj=io.BytesIO(new)).getmembers()
                    )
                elif low.endswith(".parquet"):
                    new, drop = _rewrite_parquet(data, needles)
                    n = len(drop)
                    if drop:
                        dropped_rows[_shard_number(path) or path] = drop
                    empty = False
                else:
                    continue
            except Exception as e:  # a corrupt shard is listed, never fatal
                entries.append(f"listed: {path} (could not read: {type(e).__name__}: {e})")
                continue
            if new is None:
                continue
            if empty:
                fs, p = storage.fs_path(path)
                fs.rm(p)
                entries.append(f"deleted: {path}")
            else:
                storage.write_bytes(path, new)
                entries.append(f"rewritten: {path} (-{n})")
        for path in npys:
            try:
                new = _rewrite_npy(
                    storage.read_bytes(path), needles, dropped_rows.get(_shard_number(path) or "")
                )
            except Exception as e:
                entries.append(f"listed: {path} (could not read: {type(e).__name__}: {e})")
                continue
            if new is not None:
                storage.write_bytes(path, new)
                entries.append(f"rewritten: {path}")
        log.info("export %s (%s): %d file(s) checked", row.get("export_id"), target, len(files))
    return entries, []

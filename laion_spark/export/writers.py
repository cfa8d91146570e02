"""Writers per output format: one `ShardWriter` base, a subclass per format.

A writer writes ONE shard inside one Spark task: every file goes to a hidden temporary
name in its final folder (`storage.AtomicFile`) and is renamed when the shard is complete
(`close`), so a killed export never leaves a partial file under a final name. Formats are
registered by name in laion_spark.export.formats.FORMATS.

Rows a writer receives (Arrow batches, in shard order) carry the sample metadata columns
(`META_FIELDS` less status/error_message), plus `image`/`image_format` when the format
`needs` "image" and `image_embedding`/`text_embedding` when it needs "embeddings".
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from laion_spark import storage

# per-sample metadata: the `.json` in a WebDataset shard, the rows of its `.parquet`, the
# LAION metadata parquet; names as img2dataset writes them (key, url, caption, status, ...)
META_FIELDS: list[tuple[str, pa.DataType]] = [
    ("key", pa.string()),
    ("sample_id", pa.string()),
    ("uid", pa.string()),
    ("url", pa.string()),
    ("caption", pa.string()),
    ("status", pa.string()),
    ("error_message", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("original_width", pa.int32()),
    ("original_height", pa.int32()),
    ("sha256", pa.string()),
    ("similarity", pa.float32()),
    ("punsafe", pa.float32()),
    ("pwatermark", pa.float32()),
    ("aesthetic", pa.float32()),
    ("language", pa.string()),
    ("license", pa.string()),
    ("repeat", pa.int32()),
]
META_SCHEMA = pa.schema(META_FIELDS)
# columns the rows carry (status and error_message are always success / null: only
# samples with what the format needs are exported)
ROW_META = [n for n, _ in META_FIELDS if n not in ("status", "error_message")]

# images.format -> file extension in a WebDataset shard
_EXT = {"jpeg": "jpg", "jpg": "jpg", "png": "png", "webp": "webp"}


def image_ext(fmt: str | None) -> str:
    return _EXT.get((fmt or "jpg").lower(), (fmt or "jpg").lower())


def sample_meta(row: dict[str, Any]) -> dict[str, Any]:
    meta = {n: row.get(n) for n, _ in META_FIELDS}
    meta["status"] = "success"
    return meta


def _float(v: Any) -> Any:
    # float32 values as the shortest decimal that reads back as the same float32
    return float(str(np.float32(v))) if v is not None else None


class ShardWriter:
    """Base of every format: the shard's name, its files under temporary names, the commit.

    Subclasses set `format`, what rows must carry (`needs`), and implement `write(row)` (or
    `write_batch` for columnar formats) and `finish()` (write what they buffered).
    """

    format: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()  # "image", "embeddings"
    single_shard: ClassVar[bool] = False  # e.g. a globally sorted uid array

    def __init__(self, target: str, shard: int, digits: int, token: str):
        self.target = target.rstrip("/")
        self.shard = shard
        self.name = f"{shard:0{digits}d}"
        self.token = token  # unique per task attempt: attempts never share a temporary file
        self.count = 0
        self.started = time.time()
        self._files: dict[str, storage.AtomicFile] = {}

    def open(self, relpath: str) -> io.RawIOBase:
        """A new file of this shard, `relpath` under the target (temporary until close)."""
        f = storage.AtomicFile(storage.join(self.target, relpath), self.token)
        self._files[relpath] = f
        return f.file

    def write_batch(self, batch: pa.RecordBatch) -> None:
        for row in batch.to_pylist():
            self.write(row)

    def write(self, row: dict[str, Any]) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Write what was buffered (called once, before the files are renamed)."""

    def close(self) -> dict[str, Any]:
        """Finish, rename every file to its final name; the shard's record."""
        self.finish()
        sizes = {rel: f.commit() for rel, f in self._files.items()}
        return {
            "shard": self.shard,
            "files": sorted(sizes),
            "count": self.count,
            "bytes": sum(sizes.values()),
            "seconds": round(time.time() - self.started, 3),
        }

    def abort(self) -> None:
        for f in self._files.values():
            try:
                f.abort()
            except OSError:
                pass

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


class WebDatasetWriter(ShardWriter):
    """img2dataset's layout: `{shard}.tar` holding `{key}.jpg|png|webp` (the stored bytes,
    untouched), `{key}.txt` (caption) and `{key}.json` (metadata); beside it `{shard}.parquet`
    (one metadata row per sample) and `{shard}_stats.json`.

    Tar headers carry no time or owner, so the same rows give the same bytes on every run.
    """

    format = "webdataset"
    needs = frozenset({"image"})

    def __init__(self, target: str, shard: int, digits: int, token: str):
        super().__init__(target, shard, digits, token)
        # "w|": a stream, so object-store files (write-only, no seek) work too
        self._tar = tarfile.open(fileobj=self.open(f"{self.name}.tar"), mode="w|")
        self._meta: list[dict[str, Any]] = []
        self._bytes = 0

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o444
        self._tar.addfile(info, io.BytesIO(data))
        self._bytes += len(data)

    def members(self, row: dict[str, Any], meta: dict[str, Any]) -> list[tuple[str, bytes]]:
        """(extension, bytes) of one sample's files."""
        doc = {k: _float(v) if isinstance(v, float) else v for k, v in meta.items()}
        return [
            (image_ext(row.get("image_format")), row["image"]),
            ("txt", (row.get("caption") or "").encode("utf-8")),
            ("json", json.dumps(doc, ensure_ascii=False).encode("utf-8")),
        ]

    def write(self, row: dict[str, Any]) -> None:
        meta = self.meta(row)
        for ext, data in self.members(row, meta):
            self.add(f"{row['key']}.{ext}", data)
        self._meta.append(meta)
        self.count += 1

    def meta(self, row: dict[str, Any]) -> dict[str, Any]:
        return sample_meta(row)

    def meta_schema(self) -> pa.Schema:
        return META_SCHEMA

    def finish(self) -> None:
        self._tar.close()
        table = pa.Table.from_pylist(self._meta, schema=self.meta_schema())
        pq.write_table(table, self.open(f"{self.name}.parquet"))
        stats = {  # img2dataset's {shard}_stats.json fields, then ours
            "count": self.count,
            "successes": self.count,
            "failed_to_download": 0,
            "failed_to_resize": 0,
            "duration": round(time.time() - self.started, 3),
            "status_dict": {"success": self.count} if self.count else {},
            "content_bytes": self._bytes,
        }
        self.open(f"{self.name}_stats.json").write(json.dumps(stats, indent=4).encode())


class LaionWriter(ShardWriter):
    """The LAION / clip-retrieval release layout: `img_emb/img_emb_{i}.npy` and
    `text_emb/text_emb_{i}.npy` (float16, L2-normalised, one row per sample) row-aligned
    with `metadata/metadata_{i}.parquet`. Vectors of a shard are held in memory as float16
    until the shard closes (shard_samples x dim x 4 bytes)."""

    format = "laion"
    needs = frozenset({"embeddings"})

    def __init__(self, target: str, shard: int, digits: int, token: str):
        super().__init__(target, shard, digits, token)
        self._img: list[np.ndarray] = []
        self._txt: list[np.ndarray] = []
        self._meta: list[dict[str, Any]] = []

    @staticmethod
    def _matrix(col: pa.Array, what: str) -> np.ndarray:
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        if col.null_count:
            raise ValueError(f"{what}: a row has no vector")
        values = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        offsets = col.offsets.to_numpy()
        dims = np.diff(offsets)
        if len(dims) and (dims != dims[0]).any():
            raise ValueError(f"{what}: vectors of different lengths {sorted(set(dims))[:4]}")
        x = values.reshape(len(col), int(dims[0]) if len(dims) else 0)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return (x / np.where(norms == 0, 1, norms)).astype(np.float16)

    def write_batch(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        self._img.append(self._matrix(batch.column("image_embedding"), "image_embedding"))
        self._txt.append(self._matrix(batch.column("text_embedding"), "text_embedding"))
        meta = batch.select([c for c in ROW_META if c in batch.schema.names])
        self._meta.extend(sample_meta(r) for r in meta.to_pylist())
        self.count += batch.num_rows

    def finish(self) -> None:
        for folder, parts in (("img_emb", self._img), ("text_emb", self._txt)):
            arr = np.concatenate(parts) if parts else np.zeros((0, 0), np.float16)
            np.save(self.open(f"{folder}/{folder}_{self.name}.npy"), arr)
        table = pa.Table.from_pylist(self._meta, schema=META_SCHEMA)
        pq.write_table(table, self.open(f"metadata/metadata_{self.name}.parquet"))


class ParquetWriter(ShardWriter):
    """`{shard}.parquet`: the metadata columns plus `image` (stored bytes) and
    `image_format`, one row per sample, streamed in row groups."""

    format = "parquet"
    needs = frozenset({"image"})
    SCHEMA = pa.schema([*META_FIELDS, ("image", pa.binary()), ("image_format", pa.string())])

    def __init__(self, target: str, shard: int, digits: int, token: str):
        super().__init__(target, shard, digits, token)
        self._pq = pq.ParquetWriter(self.open(f"{self.name}.parquet"), self.SCHEMA)

    def write_batch(self, batch: pa.RecordBatch) -> None:
        rows = []
        for r in batch.to_pylist():
            meta = sample_meta(r)
            meta.update(image=r["image"], image_format=r.get("image_format"))
            rows.append(meta)
        if rows:
            self._pq.write_table(pa.Table.from_pylist(rows, schema=self.SCHEMA))
        self.count += len(rows)

    def finish(self) -> None:
        self._pq.close()


class UidsWriter(ShardWriter):
    """`uids.npy`: DataComp's sorted `u8,u8` uid array (one file; a sample with repeat r
    is listed r times when repeats are expanded)."""

    format = "uids"
    single_shard = True

    def __init__(self, target: str, shard: int, digits: int, token: str):
        super().__init__(target, shard, digits, token)
        self._uids: list[str] = []

    def write_batch(self, batch: pa.RecordBatch) -> None:
        self._uids.extend(batch.column("uid").to_pylist())
        self.count += batch.num_rows

    def finish(self) -> None:
        from laion_spark.export.subset import uids_to_array

        np.save(self.open("uids.npy"), uids_to_array(self._uids))

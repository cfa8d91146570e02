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
import pyarrow.compute as pc
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


def _floats(col: pa.Array) -> list[Any]:
    """`_float` of a whole column: Arrow's float32 -> string cast writes the same shortest
    round-trip decimal, without a numpy scalar per value."""
    text = pc.cast(pc.cast(col, pa.float32(), safe=False), pa.string()).to_pylist()
    return [None if t is None else float(t) for t in text]


def meta_columns(batch: pa.RecordBatch) -> list[list[Any]]:
    """The values of `sample_meta` column by column (META_FIELDS order; floats as `_float`)."""
    n = batch.num_rows
    names = batch.schema.names
    out: list[list[Any]] = []
    for name, typ in META_FIELDS:
        if name == "status":
            out.append(["success"] * n)
        elif name not in names or name == "error_message":
            out.append([None] * n)
        elif pa.types.is_floating(typ):
            out.append(_floats(batch.column(name)))
        else:
            out.append(batch.column(name).to_pylist())
    return out


def meta_table(batch: pa.RecordBatch) -> pa.Table:
    """`sample_meta` of every row as a META_SCHEMA table, built column by column."""
    n = batch.num_rows
    names = batch.schema.names
    arrays = []
    for name, typ in META_FIELDS:
        if name == "status":
            arrays.append(pa.array(["success"] * n, typ))
        elif name not in names or name == "error_message":
            arrays.append(pa.nulls(n, typ))
        else:
            arrays.append(pc.cast(batch.column(name), typ, safe=False))
    return pa.Table.from_arrays(arrays, schema=META_SCHEMA)


# ------------------------------------------------------------------------------- tar


_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE


def _header_template() -> bytes:
    info = tarfile.TarInfo("")
    info.mode = 0o444
    head = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    return head[:148] + b" " * 8 + head[156:]  # the checksum is summed with 8 spaces


_TEMPLATE = _header_template()
_TEMPLATE_SUM = sum(_TEMPLATE) - sum(_TEMPLATE[:100]) - sum(_TEMPLATE[124:136])
_MODE_TO_SIZE = _TEMPLATE[100:124]  # mode, uid, gid
_MTIME = _TEMPLATE[136:148]
_AFTER_CHKSUM = _TEMPLATE[156:]  # type, linkname, magic, owner names, devices, prefix
_ZEROS = bytes(_BLOCK)


class TarStream:
    """What `tarfile.open(fileobj=f, mode="w|")` writes for regular files (mode 0444, no
    time, no owner), byte for byte, with ustar headers filled into a template: tarfile's
    per-member header code was most of an export's Python time. Names tarfile would give a
    pax header (not ASCII, over 100 bytes) and sizes over 8 GiB go through tarfile's own
    header code."""

    def __init__(self, f):
        self.f = f
        self.offset = 0

    @staticmethod
    def header(name: str, size: int) -> bytes:
        raw = name.encode("utf-8", "surrogateescape")
        if len(raw) > 100 or not name.isascii() or size >= 8**11:
            info = tarfile.TarInfo(name)
            info.size = size
            info.mode = 0o444
            return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        size_field = b"%011o\0" % size
        chksum = _TEMPLATE_SUM + sum(raw) + sum(size_field)
        return b"%s%s%s%s%06o\0 %s" % (
            raw.ljust(100, b"\0"),
            _MODE_TO_SIZE,
            size_field,
            _MTIME,
            chksum,
            _AFTER_CHKSUM,
        )

    def pieces(self, name: str, data: bytes) -> tuple[bytes, ...]:
        """The member's bytes (header, data, padding) as pieces to write in one go."""
        head = self.header(name, len(data))
        pad = -len(data) % _BLOCK
        self.offset += len(head) + len(data) + pad
        return (head, data, _ZEROS[:pad])

    def add(self, name: str, data: bytes) -> None:
        self.f.write(b"".join(self.pieces(name, data)))

    def close(self) -> None:
        """The two zero blocks ending the archive, then zeros to a whole record (tar -b20)."""
        end = 2 * _BLOCK
        end += -(self.offset + end) % _RECORD
        self.f.write(bytes(end))
        self.offset += end


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
        # written as a stream (no seek), so object-store files (write-only) work too
        self._tar = TarStream(self.open(f"{self.name}.tar"))
        self._meta: list[dict[str, Any]] = []  # rows written one by one (subclasses)
        self._tables: list[pa.Table] = []  # rows written batch by batch
        self._bytes = 0

    def add(self, name: str, data: bytes) -> None:
        self._tar.add(name, data)
        self._bytes += len(data)

    def write_batch(self, batch: pa.RecordBatch) -> None:
        if type(self).members is not WebDatasetWriter.members or (
            type(self).meta is not WebDatasetWriter.meta
        ):
            return super().write_batch(batch)  # a subclass's own members: row by row
        n = batch.num_rows
        if not n:
            return
        names = [name for name, _ in META_FIELDS]
        keys = batch.column("key").to_pylist()
        images = batch.column("image").to_pylist()
        fmts = (
            batch.column("image_format").to_pylist()
            if "image_format" in batch.schema.names
            else [None] * n
        )
        captions = batch.column("caption").to_pylist()
        dumps = json.JSONEncoder(ensure_ascii=False).encode
        tar = self._tar
        pieces: list[bytes] = []
        for key, image, fmt, caption, values in zip(
            keys, images, fmts, captions, zip(*meta_columns(batch), strict=True), strict=True
        ):
            text = (caption or "").encode("utf-8")
            doc = dumps(dict(zip(names, values, strict=True))).encode("utf-8")
            pieces += tar.pieces(f"{key}.{image_ext(fmt)}", image)
            pieces += tar.pieces(f"{key}.txt", text)
            pieces += tar.pieces(f"{key}.json", doc)
            self._bytes += len(image) + len(text) + len(doc)
        tar.f.write(b"".join(pieces))
        self._tables.append(meta_table(batch))
        self.count += n

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
        if self._tables:
            table = pa.concat_tables([table, *self._tables]).combine_chunks()
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
        self._meta: list[pa.Table] = []

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
        self._meta.append(meta_table(batch))
        self.count += batch.num_rows

    def finish(self) -> None:
        for folder, parts in (("img_emb", self._img), ("text_emb", self._txt)):
            arr = np.concatenate(parts) if parts else np.zeros((0, 0), np.float16)
            np.save(self.open(f"{folder}/{folder}_{self.name}.npy"), arr)
        table = pa.concat_tables(self._meta).combine_chunks() if self._meta else None
        if table is None:
            table = META_SCHEMA.empty_table()
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
        if not batch.num_rows:
            return
        table = meta_table(batch)
        for name in ("image", "image_format"):
            typ = self.SCHEMA.field(name).type
            col = batch.column(name) if name in batch.schema.names else None
            table = table.append_column(
                self.SCHEMA.field(name),
                pa.nulls(batch.num_rows, typ) if col is None else pc.cast(col, typ),
            )
        self._pq.write_table(table)
        self.count += batch.num_rows

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

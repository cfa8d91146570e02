"""Index files on any filesystem (local path, s3://, abfss://, dbfs:/) through fsspec.

Shards are written by Spark tasks straight to the index folder next to the tables; faiss
itself only reads and memory-maps local files, so merge and search copy what they need
into a local cache first (`local_copy`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

import fsspec

S3_SCHEMES = ("s3://", "s3a://", "s3n://")


def cache_root() -> Path:
    """This user's cache (models trained once, prompt embeddings, the JVM's class archive):
    $LAION_SPARK_CACHE, default ~/.cache/laion_spark."""
    return Path(os.environ.get("LAION_SPARK_CACHE") or "~/.cache/laion_spark").expanduser()


def _native(path: str) -> str:
    # Databricks mounts DBFS at /dbfs on every node: use the FUSE path when it is there
    if path.startswith("dbfs:/") and os.path.isdir("/dbfs"):
        return "/dbfs/" + path[len("dbfs:/") :].lstrip("/")
    if path.startswith("file://"):
        return path[len("file://") :]
    return path


def is_local(path: str) -> bool:
    return "://" not in _native(path) and not _native(path).startswith("dbfs:")


def is_s3(path: str | None) -> bool:
    return bool(path) and path.startswith(S3_SCHEMES)


def s3_environment(st) -> dict[str, str]:
    """Environment for the Python-side S3 clients from `storage:` settings (StorageSettings):
    s3fs (botocore reads AWS_ENDPOINT_URL) and delta-rs (object_store reads AWS_ENDPOINT_URL,
    AWS_ALLOW_HTTP). Environment rather than per-call options, because Spark's Python workers
    inherit it (and get it as spark.executorEnv on clusters), so every writer sees one endpoint."""
    env: dict[str, str] = {}
    region = st.s3_region
    if st.s3_endpoint:
        env["AWS_ENDPOINT_URL"] = st.s3_endpoint
        if st.s3_endpoint.startswith("http://"):
            env["AWS_ALLOW_HTTP"] = "true"  # delta-rs refuses plain http otherwise
        # an S3-compatible server has no instance role: never wait on the EC2 metadata service
        env["AWS_EC2_METADATA_DISABLED"] = "true"
        region = region or "us-east-1"
    if region:
        env["AWS_REGION"] = env["AWS_DEFAULT_REGION"] = region
    return env


def configure(st) -> dict[str, str]:
    """Apply s3_environment(st) to this process (before a JVM or a worker starts, so they
    inherit it); returns what was set."""
    env = s3_environment(st)
    os.environ.update(env)
    return env


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def fs_path(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, p = fsspec.core.url_to_fs(_native(path))
    return fs, p


def write_bytes(path: str, data: bytes) -> int:
    """Write `data` atomically where the filesystem allows (tmp + rename locally). The
    temporary name is this writer's own: two processes writing one path at once (two
    workers, a speculative task) each rename a whole file, never the other's half."""
    fs, p = fs_path(path)
    fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
    if is_local(path):
        tmp = writer_tmp(p)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, p)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
    else:
        with fs.open(p, "wb") as f:
            f.write(data)
    return len(data)


def read_bytes(path: str) -> bytes:
    fs, p = fs_path(path)
    with fs.open(p, "rb") as f:
        return f.read()


def exists(path: str) -> bool:
    fs, p = fs_path(path)
    return fs.exists(p)


def size(path: str) -> int:
    fs, p = fs_path(path)
    return int(fs.size(p))


def upload(local_file: str, path: str) -> None:
    fs, p = fs_path(path)
    fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
    if is_local(path):
        if os.path.abspath(local_file) != os.path.abspath(p):
            tmp = writer_tmp(p)
            shutil.copyfile(local_file, tmp)
            os.replace(tmp, p)
    else:
        fs.put_file(local_file, p)


def local_copy(path: str, cache_dir: str) -> str:
    """A local file with the content of `path` (the path itself when already local)."""
    if is_local(path):
        return fs_path(path)[1]
    cache_dir = os.path.expanduser(cache_dir)
    os.makedirs(cache_dir, exist_ok=True)
    target = os.path.join(cache_dir, path.rstrip("/").rsplit("/", 1)[-1])
    if not os.path.exists(target) or os.path.getsize(target) != size(path):
        fs, p = fs_path(path)
        tmp = writer_tmp(target)
        fs.get_file(p, tmp)
        os.replace(tmp, target)
    return target


# --- shard writing (export): temporary names renamed when complete -------------------------

TMP_MARK = ".tmp-"


def tmp_name(path: str, token: str) -> str:
    """`dir/.name.tmp-token`: hidden, so no reader's `*.tar` / `*.npy` pattern matches it."""
    head, _, name = path.rpartition("/")
    return f"{head}/.{name}{TMP_MARK}{token}" if head else f".{name}{TMP_MARK}{token}"


def writer_tmp(path: str) -> str:
    """A temporary name for `path` no other writer uses (process id + random token)."""
    return tmp_name(path, f"{os.getpid()}-{uuid.uuid4().hex[:8]}")


def is_tmp_name(path: str) -> bool:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return name.startswith(".") and TMP_MARK in name


def rename(src: str, dst: str) -> None:
    """Move `src` to `dst` (atomic on local filesystems; copy + delete on object stores,
    where the final name still appears only once its content is complete)."""
    fs, s = fs_path(src)
    d = fs_path(dst)[1]
    if is_local(src):
        os.replace(s, d)
    else:
        fs.mv(s, d)


def remove(path: str) -> None:
    fs, p = fs_path(path)
    try:
        fs.rm(p)
    except FileNotFoundError:
        pass


def makedirs(path: str) -> None:
    fs, p = fs_path(path)
    fs.makedirs(p, exist_ok=True)


def list_files(path: str) -> dict[str, int]:
    """Every file under folder `path` (recursively): path relative to it -> size in bytes."""
    fs, p = fs_path(path)
    if not fs.exists(p):
        return {}
    root = p.rstrip("/")
    out = {}
    for name, info in fs.find(root, detail=True).items():
        rel = name[len(root) :].lstrip("/") if name.startswith(root) else name
        out[rel] = int(info.get("size") or 0)
    return out


class AtomicFile:
    """A file written under a temporary name in its final folder; `commit()` renames it.

    A writer killed before `commit` leaves only the hidden temporary file (removed by the
    next run), never a partial file under the final name.
    """

    def __init__(self, path: str, token: str):
        self.path = path
        self.tmp = tmp_name(path, token)
        fs, p = fs_path(self.tmp)
        fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
        self.file = fs.open(p, "wb")

    def commit(self) -> int:
        """Close and rename to the final name; returns the file's size."""
        self.file.close()
        n = size(self.tmp)
        rename(self.tmp, self.path)
        return n

    def abort(self) -> None:
        try:
            self.file.close()
        finally:
            remove(self.tmp)

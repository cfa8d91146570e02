"""Settings of export, import of WebDataset pools and resharding (section `export:`)."""

from __future__ import annotations

from dataclasses import dataclass

from laion_spark.export.formats import FORMATS
from laion_spark.settings import require


@dataclass
class ExportSettings:
    format: str = "webdataset"  # a name in laion_spark.export.formats.FORMATS
    # shard size: samples per shard, or (when set) about this many bytes per shard (image
    # bytes + ~1.5 KB per sample for tar headers and metadata); one Spark task per shard
    shard_samples: int = 10_000
    shard_bytes: int | None = None
    # a sampler's repeats (SCS): "expand" writes a sample `repeat` times (keys KEY, KEY_0001,
    # ...); "column" writes it once with its `repeat` in the metadata
    repeats: str = "expand"
    # deterministic shuffle of samples across shards (None: shards follow key order)
    shuffle_seed: int | None = None
    # which embeddings model gives `similarity` and the laion format's vectors (None: the
    # only one in the table, or the configured embed model)
    model_id: str | None = None
    # plans up to this many rows are broadcast to the tasks that join them with image bytes
    # (one shuffle of the bytes instead of two)
    broadcast_plan_rows: int = 2_000_000
    # subsets up to this many rows (repeats expanded; bounded from the Delta log's
    # statistics) are planned on the driver from one collect of their narrow rows, instead
    # of a distributed sort + checkpoint + count (same shards either way); 0: always Spark
    local_plan_rows: int = 250_000
    # such a subset, when every table is a path table on this machine and its payload (image
    # bytes, vectors) is at most this many bytes, is read with delta-rs and written by this
    # process, `local_threads` shards at once (0: one per CPU): no Spark job; 0: never
    local_write_bytes: int = 1 << 30
    local_threads: int = 0
    # import/reshard: bounds on untrusted shards (a bigger member is skipped with a status)
    max_member_bytes: int = 64 * 1024 * 1024
    import_shards_per_commit: int = 64

    def validate(self, prefix: str) -> None:
        require(
            self.format in FORMATS,
            f"{prefix}.format",
            f"{self.format!r} is not one of {', '.join(FORMATS)}",
        )
        require(self.shard_samples >= 1, f"{prefix}.shard_samples", "must be >= 1")
        require(
            self.shard_bytes is None or self.shard_bytes >= 1,
            f"{prefix}.shard_bytes",
            "must be >= 1 (or null for shards by sample count)",
        )
        require(
            self.repeats in ("expand", "column"),
            f"{prefix}.repeats",
            f"must be expand or column, not {self.repeats!r}",
        )
        require(self.broadcast_plan_rows >= 0, f"{prefix}.broadcast_plan_rows", "must be >= 0")
        require(self.local_plan_rows >= 0, f"{prefix}.local_plan_rows", "must be >= 0")
        require(self.local_write_bytes >= 0, f"{prefix}.local_write_bytes", "must be >= 0")
        require(self.local_threads >= 0, f"{prefix}.local_threads", "must be >= 0 (0: CPUs)")
        require(self.max_member_bytes >= 1024, f"{prefix}.max_member_bytes", "must be >= 1024")
        require(
            self.import_shards_per_commit >= 1,
            f"{prefix}.import_shards_per_commit",
            "must be >= 1",
        )

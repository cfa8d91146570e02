"""Settings of the index stage (section `index:` in conf/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass

from laion_spark.settings import require


@dataclass
class IndexSettings:
    name: str = "main"
    subset: str | None = None  # index only this subset (None = every embedding)
    memory_budget_mb: int = 512  # RAM the merged index may use when served
    factory: str | None = None  # faiss factory string; None = chosen by budget and count
    partitions: int = 2  # Spark tasks that each build one shard
    # which embeddings: model_id in the embeddings table (None = the only one present, or the
    # one naming embed.model) and which vector column
    model_id: str | None = None
    vector_column: str = "image_embedding"
    metric: str = "ip"  # ip (cosine on L2-normalised vectors) | l2
    flat_max_vectors: int = 100_000  # below this (and within budget) exact Flat search
    train_max_vectors: int = 100_000  # training sample collected to the driver
    use_gpu: str = "auto"  # auto | never: faiss GPU for training when present
    # recall measured on held-out queries after merge, and the nprobe tuning target
    heldout_queries: int = 200
    target_recall: float = 0.95
    max_nprobe: int = 256
    ef_search: int = 64  # HNSW coarse quantiser efSearch
    local_cache: str = "~/.cache/laion_spark/index"  # local copy of remote shards/merged files
    # index and merge_index of local tables holding at most this many embeddings run in the
    # driver's process with delta-rs (laion_spark/index/local.py): no Spark job; 0: never
    local_max_vectors: int = 200_000

    def validate(self, prefix: str) -> None:
        require(bool(self.name) and "/" not in self.name, f"{prefix}.name", "must be a plain name")
        require(self.memory_budget_mb > 0, f"{prefix}.memory_budget_mb", "must be > 0")
        require(self.local_max_vectors >= 0, f"{prefix}.local_max_vectors", "must be >= 0")
        require(self.partitions >= 1, f"{prefix}.partitions", "must be >= 1")
        require(self.metric in ("ip", "l2"), f"{prefix}.metric", "must be ip or l2")
        require(self.use_gpu in ("auto", "never"), f"{prefix}.use_gpu", "must be auto or never")
        require(self.train_max_vectors >= 1000, f"{prefix}.train_max_vectors", "must be >= 1000")
        require(0 < self.target_recall <= 1, f"{prefix}.target_recall", "must be in (0, 1]")
        require(self.heldout_queries >= 1, f"{prefix}.heldout_queries", "must be >= 1")
        require(self.max_nprobe >= 1, f"{prefix}.max_nprobe", "must be >= 1")
        require(
            self.vector_column in ("image_embedding", "text_embedding"),
            f"{prefix}.vector_column",
            "must be image_embedding or text_embedding",
        )

"""Settings of the search service (section `serve:` in conf/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass

from laion_spark.settings import require


@dataclass
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8765
    index: str = "main"
    safe_mode: bool = True  # default of the safe-mode toggle
    punsafe_max: float = 0.5  # safe mode hides results with punsafe above this
    unscored_is_safe: bool = True  # safe mode keeps results that have no punsafe score
    dedup_threshold: float = 0.97  # cosine above which two results count as near-identical
    max_k: int = 200
    max_upload_mb: int = 10  # largest image a POST /search accepts

    def validate(self, prefix: str) -> None:
        require(0 <= self.port <= 65535, f"{prefix}.port", "must be 0..65535")
        require(0 <= self.punsafe_max <= 1, f"{prefix}.punsafe_max", "must be in [0, 1]")
        require(0 < self.dedup_threshold <= 1, f"{prefix}.dedup_threshold", "must be in (0, 1]")
        require(self.max_k >= 1, f"{prefix}.max_k", "must be >= 1")
        require(self.max_upload_mb >= 1, f"{prefix}.max_upload_mb", "must be >= 1")

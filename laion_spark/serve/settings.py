"""Settings of the search service (section `serve:` in conf/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    max_upload_mb: int = 10  # largest request body (an image query, or JSON)
    # Host header allowlist (DNS rebinding): requests naming another host get a 400.
    # Empty = localhost, 127.0.0.1, ::1 and serve.host; add the public name when exposed.
    allowed_hosts: list[str] = field(default_factory=list)
    # slow clients: headers must arrive within header_timeout_s of the connection (or of
    # the previous response), the whole body within body_timeout_s; idle keep-alive closes
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keepalive_timeout_s: float = 5.0
    max_connections: int = 256  # beyond this uvicorn answers 503
    # image queries: pixel cap checked from the header before decoding (lower than the
    # download cap: a query is one user's upload), decoded reduced to about
    # query_image_side pixels (JPEG draft mode decodes at 1/2..1/8 scale), and at most
    # max_concurrent_decodes decodes at once so memory stays bounded under load
    max_query_pixels: int = 4096 * 4096
    query_image_side: int = 512
    max_concurrent_decodes: int = 2
    # a running service re-reads the takedowns table when its Delta version changes
    takedown_poll_seconds: float = 1.0
    max_page_results: int = 1000  # paging: (page + 1) * k may not exceed this
    # subsets from queries (POST /subsets): on/off, the prefix every such subset name gets
    # (so a visitor can never overwrite a curated subset), and the most rows one may hold
    allow_subsets: bool = True
    subset_prefix: str = "query-"
    max_subset_rows: int = 100_000

    def validate(self, prefix: str) -> None:
        require(0 <= self.port <= 65535, f"{prefix}.port", "must be 0..65535")
        require(0 <= self.punsafe_max <= 1, f"{prefix}.punsafe_max", "must be in [0, 1]")
        require(0 < self.dedup_threshold <= 1, f"{prefix}.dedup_threshold", "must be in (0, 1]")
        require(self.max_k >= 1, f"{prefix}.max_k", "must be >= 1")
        require(self.max_upload_mb >= 1, f"{prefix}.max_upload_mb", "must be >= 1")
        for key in ("header_timeout_s", "body_timeout_s", "keepalive_timeout_s"):
            require(getattr(self, key) > 0, f"{prefix}.{key}", "must be > 0")
        require(self.max_connections >= 8, f"{prefix}.max_connections", "must be >= 8")
        require(self.max_query_pixels >= 64 * 64, f"{prefix}.max_query_pixels", "must be >= 4096")
        require(self.query_image_side >= 32, f"{prefix}.query_image_side", "must be >= 32")
        require(
            self.max_concurrent_decodes >= 1, f"{prefix}.max_concurrent_decodes", "must be >= 1"
        )
        require(self.takedown_poll_seconds > 0, f"{prefix}.takedown_poll_seconds", "must be > 0")
        require(
            self.max_page_results >= self.max_k,
            f"{prefix}.max_page_results",
            "must be >= serve.max_k",
        )
        require(self.max_subset_rows >= 1, f"{prefix}.max_subset_rows", "must be >= 1")
        require(
            bool(self.subset_prefix)
            and self.subset_prefix.replace("-", "").replace("_", "").isalnum(),
            f"{prefix}.subset_prefix",
            "must be letters, digits, - or _",
        )

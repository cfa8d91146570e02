"""Settings of the download stage (section `download:` in conf/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field

from laion_spark.settings import require

RESIZE_MODES = ("no", "border", "keep_ratio", "keep_ratio_largest", "center_crop")
ENCODE_FORMATS = ("jpg", "png", "webp")
SOURCE_FORMATS = ("JPEG", "PNG", "WEBP")


@dataclass
class DownloadSettings:
    # --- resize / encode (img2dataset's meaning) ---
    image_size: int = 256
    resize_mode: str = "border"
    resize_only_if_bigger: bool = False
    encode_format: str = "jpg"
    # jpg/webp: quality 0-100; png: compression level 0-9
    encode_quality: int = 95
    # keep the original bytes when nothing would change (same format, no resize/alpha/rotation)
    skip_reencode: bool = False
    # decode big JPEGs at 1/2, 1/4, 1/8 scale in the DCT when the result is still >= the
    # target size (the final area resize still runs): same look, several times less work
    fast_jpeg_decode: bool = True
    # --- time bounds ---
    # total deadline per sample (all redirects, retries and the body read together)
    timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    # longest wait for the next bytes of a response
    read_timeout_s: float = 5.0
    retries: int = 1
    # first retry waits backoff_s, then doubles (bounded by the deadline)
    backoff_s: float = 0.5
    # a 429/503 Retry-After longer than this is not waited for (status http_error)
    max_retry_after_s: float = 5.0
    # --- size bounds ---
    max_bytes: int = 20_000_000
    max_pixels: int = 89_478_485
    # decoded pixels in flight across one task's threads: a 300 KB PNG can decode to 81 MP
    # (~0.6 GB while resized); without a cap, `threads` of them at once exhaust a worker
    decode_pixels_in_flight: int = 100_000_000
    min_image_size: int = 0
    allowed_formats: list[str] = field(default_factory=lambda: list(SOURCE_FORMATS))
    # responses whose Content-Type starts with one of these are refused before the body is read
    reject_content_types: list[str] = field(
        default_factory=lambda: ["text/", "application/json", "application/javascript"]
    )
    max_redirects: int = 5
    # --- concurrency ---
    # fetch threads inside one Spark task (total concurrency per task)
    threads: int = 32
    # at most this many requests in flight to one host from one task
    per_host_concurrency: int = 16
    # Spark tasks to split the work into (0 = 2 x default parallelism)
    partitions: int = 0
    # commit to Delta every this many samples (a crash loses at most one chunk of work)
    rows_per_commit: int = 50_000
    # --- identity and opt-out ---
    user_agent_token: str = "laion-spark"
    opt_out_tags: list[str] = field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"]
    )
    respect_robots_txt: bool = False
    # --- SSRF guard ---
    ssrf_guard: bool = True
    # addresses/CIDRs allowed although private/loopback (tests and the demo only)
    allow_networks: list[str] = field(default_factory=list)
    retry_failed: bool = False

    def validate(self, prefix: str) -> None:
        p = prefix or "download"
        if self.resize_mode in ("False", "false"):
            # YAML 1.1 reads a bare `no` as false; img2dataset's mode is the word "no"
            self.resize_mode = "no"
        require(
            self.resize_mode in RESIZE_MODES,
            f"{p}.resize_mode",
            f"must be one of {list(RESIZE_MODES)}",
        )
        require(
            self.encode_format in ENCODE_FORMATS,
            f"{p}.encode_format",
            f"must be one of {list(ENCODE_FORMATS)}",
        )
        require(self.image_size > 0, f"{p}.image_size", "must be > 0")
        if self.encode_format == "png":
            require(
                0 <= self.encode_quality <= 9, f"{p}.encode_quality", "png compression must be 0-9"
            )
        else:
            require(0 <= self.encode_quality <= 100, f"{p}.encode_quality", "must be 0-100")
        for k in ("timeout_s", "connect_timeout_s", "read_timeout_s"):
            require(getattr(self, k) > 0, f"{p}.{k}", "must be > 0")
        require(self.retries >= 0, f"{p}.retries", "must be >= 0")
        require(self.max_bytes > 0, f"{p}.max_bytes", "must be > 0")
        require(self.max_pixels > 0, f"{p}.max_pixels", "must be > 0")
        require(self.decode_pixels_in_flight > 0, f"{p}.decode_pixels_in_flight", "must be > 0")
        require(self.max_redirects >= 0, f"{p}.max_redirects", "must be >= 0")
        require(self.threads >= 1, f"{p}.threads", "must be >= 1")
        require(self.per_host_concurrency >= 1, f"{p}.per_host_concurrency", "must be >= 1")
        require(self.rows_per_commit >= 1, f"{p}.rows_per_commit", "must be >= 1")
        require(self.partitions >= 0, f"{p}.partitions", "must be >= 0")
        bad = [f for f in self.allowed_formats if f.upper() not in SOURCE_FORMATS]
        require(
            not bad, f"{p}.allowed_formats", f"unsupported {bad}; supported {list(SOURCE_FORMATS)}"
        )
        require(bool(self.user_agent_token.strip()), f"{p}.user_agent_token", "must not be empty")
        try:
            from laion_spark.download.ssrf import parse_networks

            parse_networks(self.allow_networks)
        except ValueError as e:
            require(False, f"{p}.allow_networks", str(e))

"""Settings of the download stage (section `download:` in conf/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DownloadConfig:
    image_size: int = 256
    resize_mode: str = "border"
    resize_only_if_bigger: bool = False
    encode_format: str = "jpg"
    encode_quality: int = 95
    skip_reencode: bool = False
    timeout_s: float = 10.0
    retries: int = 1
    max_bytes: int = 20_000_000
    max_pixels: int = 89_478_485
    min_image_size: int = 0
    max_redirects: int = 5
    threads: int = 32
    per_host_concurrency: int = 16
    user_agent_token: str = "laion-spark"
    opt_out_tags: list[str] = field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"]
    )
    # SSRF guard: addresses/CIDRs allowed although private/loopback (tests and the demo only)
    allow_networks: list[str] = field(default_factory=list)
    respect_robots_txt: bool = False
    retry_failed: bool = False

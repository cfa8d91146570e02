"""Settings of the extract stage (section `extract:` in conf/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ExtractConfig:
    # WAT/WARC files or listings (local paths, s3://, https://; *.paths.gz listings expand)
    inputs: list[str] = field(default_factory=list)
    min_caption_chars: int = 5
    max_caption_chars: int = 2000
    max_url_chars: int = 2048
    dedup_by_url: bool = False
    drop_extensions: list[str] = field(default_factory=lambda: ["svg", "gif"])
    crawl_id: str | None = None

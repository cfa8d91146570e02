"""Settings of the curate stage (section `curate:` in conf/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CurateConfig:
    # named filters to materialise as subsets when the stage runs
    filters: list[str] = field(default_factory=lambda: ["clip_threshold"])
    semdedup_eps: float = 0.05
    seed: int = 0

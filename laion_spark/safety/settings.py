"""Settings of the score stage (section `score:` in conf/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ScoreConfig:
    nsfw_head: str | None = None  # local file of the punsafe MLP head
    watermark_head: str | None = None
    aesthetic_head: str | None = None
    toxicity_model: str | None = None
    punsafe_threshold: float = 0.5
    pwatermark_threshold: float = 0.8

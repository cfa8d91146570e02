"""Settings of the index stage (section `index:` in conf/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class IndexConfig:
    name: str = "main"
    subset: str | None = None  # index only this subset (None = every embedding)
    memory_budget_mb: int = 512
    factory: str | None = None  # faiss factory string; None = chosen by budget and count
    partitions: int = 2

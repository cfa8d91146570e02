"""Settings of the search service (section `serve:` in conf/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    index: str = "main"
    safe_mode: bool = True

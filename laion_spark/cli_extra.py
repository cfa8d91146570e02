"""Stage-specific commands of `laion-spark` (search, serve, takedown, ...)."""

from __future__ import annotations

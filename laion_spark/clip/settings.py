"""Settings of the embed stage (section `clip:` in conf/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ClipConfig:
    # open_clip architecture name, or "tiny-clip" (the project's own small model)
    model: str = "tiny-clip"
    # hub tag (e.g. "laion2b_s34b_b79k") or a local checkpoint path; None = tiny-clip cache
    pretrained: str | None = None
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | fp32 | fp16 | bf16
    batch_size: int = 256
    decode_threads: int = 2
    threshold_en: float = 0.28
    threshold_multi: float = 0.26

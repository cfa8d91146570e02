"""Settings of the score stage (section `score:` in conf/*.yaml).

Every model is optional: with none configured the stage still runs, leaves that score
null and records the model as "absent" in `scores.score_models` (a score is never invented).
"""

from __future__ import annotations

from dataclasses import dataclass

from laion_spark.models.device import require_device
from laion_spark.settings import require


@dataclass
class ScoreSettings:
    # heads over CLIP embeddings (laion_spark.models.heads file format, see docs/score.md)
    nsfw_head: str | None = None  # punsafe MLP (LAION detector shape)
    watermark_head: str | None = None  # cheap pwatermark head over image embeddings
    aesthetic_head: str | None = None  # linear aesthetic predictor (or LAION's .pth)
    toxicity_model: str | None = None  # head over CLIP *text* embeddings; else the word list
    # image classifier for pwatermark (LAION: timm efficientnet_b3a + 2-layer head); wins over
    # watermark_head when set. Only this model re-reads image bytes from `images`.
    watermark_image_model: str | None = None
    watermark_image_arch: str = "efficientnet_b3a"
    watermark_image_size: int = 256
    # zero-shot NSFW tags (LAION-400M); prompts are encoded with the `embed:` model
    zero_shot: bool = True
    prompts_dir: str | None = None  # default: conf/prompts
    toxic_words: str | None = None  # default: <prompts_dir>/toxic_words.txt
    word_list_toxicity: bool = True  # use the word list when no toxicity_model is set
    punsafe_threshold: float = 0.5
    pwatermark_threshold: float = 0.8
    toxicity_threshold: float = 0.5
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    batch_rows: int = 4096  # rows per Arrow batch handed to the Python worker
    # local path tables and at most this many embeddings of the model: score in this
    # process with delta-rs reads and one delta-rs MERGE, no Spark job (0 = always Spark)
    local_max_rows: int = 100_000

    def validate(self, prefix: str) -> None:
        p = prefix or "score"
        for name in ("punsafe_threshold", "pwatermark_threshold", "toxicity_threshold"):
            v = getattr(self, name)
            require(0.0 <= v <= 1.0, f"{p}.{name}", f"must be within [0, 1], not {v}")
        require(self.watermark_image_size >= 16, f"{p}.watermark_image_size", "must be >= 16")
        require(self.batch_rows >= 1, f"{p}.batch_rows", "must be >= 1")
        require(self.local_max_rows >= 0, f"{p}.local_max_rows", "must be >= 0 (0 = never)")
        require_device(self.device, f"{p}.device")

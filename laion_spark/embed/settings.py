"""Settings of the embed stage (section `embed:` in conf/*.yaml; `clip:` is the deprecated name)."""

from __future__ import annotations

from dataclasses import dataclass, field

from laion_spark.models.device import require_device, require_precision
from laion_spark.settings import require

# language groups a multilingual text tower can serve (en stays with CLIP's own text tower)
TOWER_GROUPS = ("multi", "nolang")


@dataclass
class EmbedSettings:
    # open_clip architecture name, or "tiny-clip" (the project's own small model)
    model: str = "tiny-clip"
    # hub tag (e.g. "laion2b_s34b_b79k") or a local checkpoint file/dir; None = tiny-clip cache
    pretrained: str | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (fp16 on cuda, fp32 on cpu) | fp32 | fp16 | bf16
    batch_size: int = 256  # images per model forward pass
    arrow_batch_size: int = 1024  # rows per Arrow batch handed to the Python worker
    # ...and at most this many MB per batch (image bytes dominate): images that were not
    # resized (an imported pool) would make 1,024 rows several GB, past Arrow's 2 GB column
    arrow_batch_mb: int = 128
    decode_threads: int = 2  # JPEG decode + preprocess threads per task, overlapped with compute
    # cpu: PIL on the decode threads; device: JPEGs decoded and preprocessed where the model
    # runs (nvJPEG on a GPU; models/device_decode.py), other formats on the CPU
    decode: str = "cpu"
    # torch threads per task on CPU; 0 = spark.task.cpus (the task's cores)
    cpu_threads: int = 0
    max_image_pixels: int = 64_000_000  # refuse larger images (decompression bombs)
    # local tables and at most this many images: the pending rows are counted with delta-rs
    # in the driver, not by a Spark job (0 = always Spark); the embedding pass is Spark's
    local_count_max_rows: int = 2_000_000
    # language group -> multilingual text tower (M-CLIP layout: a local directory or a hub
    # id; "tiny-mclip" = the project's tiny one for tiny-clip). Captions of that group get
    # their text embedding and similarity from it; other groups from the CLIP model.
    text_towers: dict[str, str] = field(default_factory=dict)

    def validate(self, prefix: str) -> None:
        p = prefix or "embed"
        require(bool(self.model), f"{p}.model", "must name an open_clip architecture or tiny-clip")
        require_device(self.device, f"{p}.device")
        require_precision(self.precision, f"{p}.precision")
        require(self.batch_size >= 1, f"{p}.batch_size", "must be >= 1")
        require(self.arrow_batch_size >= 1, f"{p}.arrow_batch_size", "must be >= 1")
        require(1 <= self.arrow_batch_mb <= 1024, f"{p}.arrow_batch_mb", "must be 1..1024")
        require(self.decode_threads >= 1, f"{p}.decode_threads", "must be >= 1")
        require(self.decode in ("cpu", "device"), f"{p}.decode", "must be cpu or device")
        require(self.cpu_threads >= 0, f"{p}.cpu_threads", "must be >= 0")
        require(self.max_image_pixels >= 1, f"{p}.max_image_pixels", "must be >= 1")
        require(self.local_count_max_rows >= 0, f"{p}.local_count_max_rows", "must be >= 0")
        for group, spec in (self.text_towers or {}).items():
            require(
                group in TOWER_GROUPS,
                f"{p}.text_towers.{group}",
                f"a tower serves a language group: {' or '.join(TOWER_GROUPS)} "
                "(en uses the CLIP model's own text tower)",
            )
            require(
                isinstance(spec, str) and bool(spec.strip()),
                f"{p}.text_towers.{group}",
                "must be a tower directory, a hub id or tiny-mclip",
            )

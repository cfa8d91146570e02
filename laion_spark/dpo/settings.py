"""Settings of the CLIP-DPO stages (section `dpo:` in conf/*.yaml).

    dpo:
      pool: {instruction: "Describe the image."}        # pool from our images + candidates
      generate: {model: tiny-llava, responses_per_prompt: 4, temperature: 1.0, top_p: 0.9}
      score: {models: [], aggregate: mean}              # [] = the embed: model
      select: {min_margin: 0.02, max_length_ratio: 1.6, max_pairs_per_image: 2}

docs/dpo.md says which rule comes from which section of the paper and which numbers are
ours (the paper leaves them open).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from laion_spark.embed.settings import EmbedSettings
from laion_spark.models.device import require_device, require_precision
from laion_spark.settings import require

# the paper's caption prompts (Sec. 3.2) are several instructions per image; these three
# cover a short caption, a detailed description and the SFT instruction itself
DEFAULT_TEMPLATES: dict[str, str] = {
    "short": "Give a short caption of the image.",
    "detailed": "Describe the image in detail.",
    "instruction": "{instruction}",
}


@dataclass
class PoolSettings:
    # the instruction a pool row built from our own images carries (its reference answer is
    # the image's caption from `candidates`)
    instruction: str = "Describe the image."
    # dpo_generate first adds our downloaded images to the pool (insert-only, by sample_id)
    from_images: bool = False
    # the share of our images that enter the pool, chosen by a hash of sample_id (so the
    # same images on every run: re-runs add nothing)
    images_fraction: float = 1.0
    max_image_bytes: int = 20_000_000  # LLaVA-JSON images larger than this are refused
    max_json_bytes: int = 2_000_000_000  # refuse SFT JSON files larger than this


@dataclass
class GenerateSettings:
    # "tiny-llava" (the project's small captioner, trained once and cached), a Hugging Face
    # hub id or a local directory holding a LLaVA-family model + processor
    model: str = "tiny-llava"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (fp16 on cuda, fp32 on cpu) | fp32 | fp16 | bf16
    responses_per_prompt: int = 4  # N sampled responses per (image, template)
    templates: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TEMPLATES))
    temperature: float = 1.0
    top_p: float = 0.9
    max_new_tokens: int = 64
    batch_size: int = 8  # prompts per generate() call (each yields N responses)
    seed: int = 0  # base of every per-batch sampling seed (recorded per response)
    cpu_threads: int = 0  # torch threads per task on CPU; 0 = spark.task.cpus
    max_image_pixels: int = 64_000_000
    arrow_batch_size: int = 64  # rows per Arrow batch handed to the Python worker
    # local tables and at most this many rows in sft_pool (and images, with
    # pool.from_images): generate in the driver with delta-rs, no Spark job (0 = always Spark)
    local_max_rows: int = 5000


@dataclass
class DpoScoreSettings:
    # the CLIP ensemble; [] = the `embed:` model alone. Each entry takes embed:'s keys
    # (model, pretrained, device, precision, batch_size, ...)
    models: list[EmbedSettings] = field(default_factory=list)
    # how a response split into chunks (sentences, then word windows that fit the text
    # tower's context) gets one score per model: mean or min over its chunks
    aggregate: str = "mean"
    # per-model score normalisation before the ensemble average: zscore (each model's scores
    # standardised over the scored pool, then put on the first model's scale) | none
    normalize: str = "zscore"
    # text-heavy image detection (no OCR model): statistic (edge/stroke statistic of the
    # pixels) | zeroshot (CLIP prompts "text" vs "photo") | off
    text_detector: str = "statistic"
    # text_score at or above: the image counts as text-heavy (statistic: generated documents
    # score 0.58+, posters 0.17+, scenes, clutter and textures 0.02 or less; docs/dpo.md)
    text_threshold: float = 0.25
    batch_rows: int = 256  # rows per Arrow batch handed to the Python worker


@dataclass
class SelectSettings:
    name: str = "default"  # the selection these pairs belong to (dpo_pairs.selection)
    drop_text_heavy: bool = True
    # the chosen response's ensemble score must reach this; None = the first scorer's
    # calibrated CLIP-filter threshold (LAION's 0.28 for real CLIP, tiny-clip's own)
    min_chosen_score: float | None = None
    min_margin: float = 0.02  # chosen - rejected, in the first scorer's cosine units
    # longer / shorter response, in words: DPO otherwise learns a length preference
    max_length_ratio: float = 1.6
    # pairs whose two responses are this similar or more are dropped (difflib ratio over
    # their content words: 1.0 = they differ only in case, punctuation or function words;
    # 0.97 also drops one changed word in 33 or more, where CLIP's margin is noise)
    max_similarity: float = 0.97
    max_pairs_per_image: int = 2
    # responses longer than this many words are not paired (the paper drops long captions;
    # we score them in chunks instead, so off by default)
    max_response_words: int | None = None
    # only pair responses to the same prompt template (DPO compares answers to one prompt)
    same_template: bool = True


@dataclass
class DpoSettings:
    pool: PoolSettings = field(default_factory=PoolSettings)
    generate: GenerateSettings = field(default_factory=GenerateSettings)
    score: DpoScoreSettings = field(default_factory=DpoScoreSettings)
    select: SelectSettings = field(default_factory=SelectSettings)

    def validate(self, prefix: str) -> None:
        p = prefix or "dpo"
        g, s, sel = self.generate, self.score, self.select
        require(
            0 < self.pool.images_fraction <= 1,
            f"{p}.pool.images_fraction",
            f"must be within (0, 1], not {self.pool.images_fraction}",
        )
        require(self.pool.max_image_bytes >= 1, f"{p}.pool.max_image_bytes", "must be >= 1")
        require(bool(g.model), f"{p}.generate.model", "must name tiny-llava, a hub id or a dir")
        require_device(g.device, f"{p}.generate.device")
        require_precision(g.precision, f"{p}.generate.precision")
        require(g.responses_per_prompt >= 1, f"{p}.generate.responses_per_prompt", "must be >= 1")
        require(bool(g.templates), f"{p}.generate.templates", "must name at least one template")
        for name, text in g.templates.items():
            require(bool(text.strip()), f"{p}.generate.templates.{name}", "must not be empty")
        require(g.temperature > 0, f"{p}.generate.temperature", "must be > 0")
        require(0 < g.top_p <= 1, f"{p}.generate.top_p", f"must be within (0, 1], not {g.top_p}")
        require(g.max_new_tokens >= 1, f"{p}.generate.max_new_tokens", "must be >= 1")
        require(g.batch_size >= 1, f"{p}.generate.batch_size", "must be >= 1")
        require(g.arrow_batch_size >= 1, f"{p}.generate.arrow_batch_size", "must be >= 1")
        require(g.cpu_threads >= 0, f"{p}.generate.cpu_threads", "must be >= 0")
        require(g.local_max_rows >= 0, f"{p}.generate.local_max_rows", "must be >= 0 (0 = never)")
        require(
            s.aggregate in ("mean", "min"),
            f"{p}.score.aggregate",
            f"must be mean or min, not {s.aggregate!r}",
        )
        require(
            s.normalize in ("zscore", "none"),
            f"{p}.score.normalize",
            f"must be zscore or none, not {s.normalize!r}",
        )
        require(
            s.text_detector in ("statistic", "zeroshot", "off"),
            f"{p}.score.text_detector",
            f"must be statistic, zeroshot or off, not {s.text_detector!r}",
        )
        require(s.batch_rows >= 1, f"{p}.score.batch_rows", "must be >= 1")
        require(bool(sel.name), f"{p}.select.name", "must not be empty")
        require(sel.min_margin >= 0, f"{p}.select.min_margin", "must be >= 0")
        require(sel.max_length_ratio >= 1, f"{p}.select.max_length_ratio", "must be >= 1")
        require(
            0 < sel.max_similarity <= 1,
            f"{p}.select.max_similarity",
            f"must be within (0, 1], not {sel.max_similarity}",
        )
        require(sel.max_pairs_per_image >= 1, f"{p}.select.max_pairs_per_image", "must be >= 1")
        if sel.max_response_words is not None:
            require(sel.max_response_words >= 1, f"{p}.select.max_response_words", "must be >= 1")

"""Settings of the curate stage (section `curate:` in conf/*.yaml).

A *named filter* is `{kind: <registry kind>, ...params}`. Built-in names (see
laion_spark.curate.registry.BUILTIN) can be used as they are; `definitions` adds new
names or overrides the parameters of built-in ones:

    curate:
      filters: [basic, clip_top30, basic_and_clip]
      definitions:
        basic_and_clip: {kind: intersect, of: [basic, clip_top30]}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from laion_spark.settings import require


@dataclass
class FlytSettings:
    # per-sample score columns M-FLYT mixes (columns of the pool view)
    mflyt_columns: list[str] = field(
        default_factory=lambda: ["similarity", "punsafe", "pwatermark", "flyt_score"]
    )
    hidden: int = 64  # width of the FLYT scoring head's hidden layer (0 = linear head)
    steps: int = 200  # outer (scoring-head) optimisation steps
    batch_size: int = 256  # upstream batch the softmax weights are taken over
    lr: float = 1e-3  # scoring head learning rate
    inner_lr: float = 0.05  # the reference model's one differentiated SGD step
    online_reference: bool = True  # also update the reference model after each step
    temperature: float = 0.07  # contrastive temperature of the reference model
    max_train_rows: int = 200_000  # rows collected to the driver for training (sampled)
    # early stopping: 0 = run exactly `steps`; N = stop after N evaluations without a new
    # best validation gain (steps is then the maximum) and keep the best head
    patience: int = 0
    eval_every: int = 50  # steps between validation evaluations
    val_fraction: float = 0.2  # share of every task's images held out for validation
    val_batches: int = 8  # fixed upstream batches the validation gain is averaged over

    def validate(self, prefix: str) -> None:
        p = prefix or "curate.flyt"
        require(self.steps >= 1, f"{p}.steps", "must be >= 1")
        require(self.patience >= 0, f"{p}.patience", "must be >= 0")
        require(self.eval_every >= 1, f"{p}.eval_every", "must be >= 1")
        require(0 < self.val_fraction < 1, f"{p}.val_fraction", "must be in (0, 1)")
        require(self.val_batches >= 1, f"{p}.val_batches", "must be >= 1")


@dataclass
class CurateSettings:
    # named filters to materialise as subsets when the stage runs
    filters: list[str] = field(default_factory=lambda: ["clip_filter"])
    # user-defined named filters, or parameter overrides of built-in ones
    definitions: dict[str, dict[str, Any]] = field(default_factory=dict)
    # embeddings.model_id whose similarity/embeddings filters use (None = the only/first one)
    model_id: str | None = None
    # the one CLIP-score threshold setting: language code, group (en/multi/nolang) or "*" ->
    # cosine; empty = the embedding model's defaults (LAION-5B: en 0.28, others 0.26 for
    # ViT-B/32; tiny-clip: calibrated when trained). See rules.clip_threshold.
    clip_thresholds: dict[str, float] = field(default_factory=dict)
    top_fraction: float = 0.3
    # exact: DataComp's rule (sort, the value at rank int(N*fraction)); approx:
    # approx_percentile with this accuracy (rank error <= N / accuracy)
    quantile: str = "exact"
    approx_accuracy: int = 10_000
    # samples whose image failed to download are never selected (when `images` exists)
    require_image: bool = True
    semdedup_eps: float = 0.05
    semdedup_clusters: int = 16
    image_clusters: int = 64
    # Delta/parquet path (or table name) with an `embedding` column: the target set of the
    # image-based filter (DataComp: ImageNet train); None = the class-name text embeddings
    image_target: str | None = None
    vocabulary: str | None = None  # class-name file; None = the shipped one
    punsafe_max: float = 0.5
    pwatermark_max: float = 0.8
    languages: list[str] = field(default_factory=lambda: ["en"])
    scs_alpha: float = 0.2  # Soft Cap Sampling: logit decrease per draw
    sample_size: int | None = None  # N drawn by samplers (None = pool size)
    hard_cap: int = 1  # Hard Cap Sampling: max repeats of one sample
    sampler_max_rows: int = 5_000_000  # driver-side sampler limit (see docs/curate.md)
    seed: int = 0
    flyt: FlytSettings = field(default_factory=FlytSettings)

    def validate(self, prefix: str) -> None:
        p = prefix or "curate"
        require(0 < self.top_fraction <= 1, f"{p}.top_fraction", "must be in (0, 1]")
        require(self.quantile in ("exact", "approx"), f"{p}.quantile", "must be exact or approx")
        require(self.approx_accuracy >= 1, f"{p}.approx_accuracy", "must be >= 1")
        require(0 <= self.semdedup_eps < 1, f"{p}.semdedup_eps", "must be in [0, 1)")
        require(self.semdedup_clusters >= 1, f"{p}.semdedup_clusters", "must be >= 1")
        require(self.image_clusters >= 1, f"{p}.image_clusters", "must be >= 1")
        require(self.scs_alpha > 0, f"{p}.scs_alpha", "must be > 0")
        require(self.hard_cap >= 1, f"{p}.hard_cap", "must be >= 1")
        require(
            self.sample_size is None or self.sample_size >= 1, f"{p}.sample_size", "must be >= 1"
        )
        for name, d in self.definitions.items():
            require(isinstance(d, dict) and "kind" in d, f"{p}.definitions.{name}", "needs a kind")
        for lang, t in self.clip_thresholds.items():
            require(-1 <= t <= 1, f"{p}.clip_thresholds.{lang}", "must be a cosine in [-1, 1]")

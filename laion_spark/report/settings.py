"""Settings of the dataset report (section `report:` in conf/*.yaml).

The report is read-only: it reads the tables at fixed Delta versions and writes files
(index.html, README.md, report.json) to `--out` or a new folder under `root`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from laion_spark.settings import require


@dataclass
class ReportSettings:
    # where reports go when --out is not given: <root>/<UTC time>; `serve` links the newest
    # one found here. None = <workdir>/reports
    root: str | None = None
    # keyword probes: one query term per line (# comments); None = conf/audit/terms.txt
    terms: str | None = None
    probes: bool = True
    index_probes: bool = True  # also run each term as a text query against the merged index
    probe_k: int = 50  # index results per term (the audit looked at the top results)
    top_n: int = 20  # rows shown for languages, domains, licenses
    # CLIP threshold sweep as [start, stop, step]; empty = the applied English threshold
    # +- 0.08 in steps of 0.01 (LAION-5B's 0.28 gives 0.20 -> 0.36)
    sweep: list[float] = field(default_factory=list)
    similarity_bins: int = 200  # fixed bins over [-1, 1] for the CLIP similarity histograms
    # thumbnails of samples whose punsafe is known and below score.punsafe_threshold (and
    # tagged UNLIKELY, no drop flag); 0 = none. Never shows anything else.
    thumbnails: int = 0
    model_id: str | None = None  # embeddings model; None = the one rule (models.clip)
    title: str | None = None  # dataset card pretty_name; None = "<workdir name> (laion_spark)"
    license: str | None = None  # card `license:` id; None = derived from per-sample licenses
    contact: str | None = None  # where removal requests go (card); None = the takedown command

    def validate(self, prefix: str) -> None:
        p = prefix or "report"
        require(self.probe_k >= 1, f"{p}.probe_k", "must be >= 1")
        require(self.top_n >= 1, f"{p}.top_n", "must be >= 1")
        require(self.similarity_bins >= 10, f"{p}.similarity_bins", "must be >= 10")
        require(self.thumbnails >= 0, f"{p}.thumbnails", "must be >= 0")
        if self.sweep:
            require(
                len(self.sweep) == 3,
                f"{p}.sweep",
                f"must be [start, stop, step], not {self.sweep}",
            )
            start, stop, step = self.sweep
            require(step > 0 and stop >= start, f"{p}.sweep", "needs start <= stop and step > 0")
            require((stop - start) / step <= 200, f"{p}.sweep", "at most 200 steps")

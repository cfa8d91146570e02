"""`laion-spark report`: stats (Spark) -> plots -> index.html, README.md, report.json.

    result = build_report(spark, cfg, tables, out="reports/r1", subset="clip_filter")
    result.out, result.report["population"]["nsfw_share"]

Steps: pin every table at one Delta version (`snapshot`), aggregate in Spark (`stats`,
`probes`), then render without Spark: plots from the aggregates (`plots`), the page
(`html`), the dataset card (`card`). report.json holds every number the page and the card
show, and the version of each table read, so `--as-of <report.json>` reproduces it.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from laion_spark import storage
from laion_spark.config import Config
from laion_spark.report import stats
from laion_spark.report.output import default_out, latest_report
from laion_spark.report.snapshot import REPORT_TABLES, AsOfError, Snapshot
from laion_spark.tables import Tables

log = logging.getLogger(__name__)
REPORT_FORMAT = 1
REPORT_FILES = ("report.json", "README.md", "index.html")


class ReportError(ValueError):
    """The report cannot be made as asked (unknown subset, bad --compare); says why."""


@dataclass
class ReportResult:
    out: str
    report: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    reused: bool = False  # the latest report already described these tables (`reuse_key`)


def build_report(
    spark,
    cfg: Config,
    tables: Tables,
    out: str | None = None,
    subset: str | None = None,
    compare: str | None = None,
    as_of: str | None = None,
    probes: bool | None = None,
    reuse: bool = True,
) -> ReportResult:
    """Compute, draw and write one report; returns where it went and the numbers.

    With `reuse`, no `out` and no `as_of`, the latest report is returned instead when it was
    made from the same data versions with the same request and config (`reuse_key`)."""
    from laion_spark.extras import require

    require("report", "matplotlib")
    t0 = time.time()
    # the key before the snapshot: a write in between makes the next run rebuild, never reuse
    key = reuse_key(cfg, tables, subset, compare, probes) if as_of is None else None
    if reuse and out is None and key is not None:
        prior = _reusable(cfg, key)
        if prior is not None:
            prior.seconds = time.time() - t0
            log.info("report: tables unchanged since %s: reusing it", prior.files["index.html"])
            return prior
    snap = Snapshot.resolve(tables, as_of)
    log.info("report: snapshot resolved in %.1fs", time.time() - t0)
    report = compute(spark, cfg, tables, snap, subset, compare, probes)
    report["reuse_key"] = key
    thumbs = safe_thumbnails(snap, tables, cfg, report) if cfg.report.thumbnails else []
    report["thumbnails"] = [t["sample_id"] for t in thumbs]
    t_stats = time.time() - t0
    t1 = time.time()
    files = write_report(report, out or default_out(cfg), thumbs)
    log.info("report: rendered and written in %.1fs", time.time() - t1)
    seconds = time.time() - t0
    log.info(
        "report: %d rows, stats %.1fs, total %.1fs -> %s",
        report["population"]["rows"],
        t_stats,
        seconds,
        files["index.html"],
    )
    return ReportResult(out=files["dir"], report=report, files=files, seconds=seconds)


def reuse_key(cfg: Config, tables: Tables, subset, compare, probes) -> str:
    """What a report is a function of: the data versions of the tables it reads, the request
    and the whole config. `runs` is left out: every stage run, even one that changed nothing,
    appends to it; what the report takes from it (curate's thresholds) is either settings
    (in the config) or went with a change to `subsets`."""
    from laion_spark.stage import config_digest, inputs_digest

    names = tuple(n for n in REPORT_TABLES if n != "runs")
    request = {"format": REPORT_FORMAT, "subset": subset, "compare": compare, "probes": probes}
    return inputs_digest(tables, names, {"request": request, "config": config_digest(cfg)})


def _reusable(cfg: Config, key: str) -> ReportResult | None:
    """The latest complete report, if its `reuse_key` is `key`."""
    html = latest_report(cfg)
    if html is None:
        return None
    folder = html[: -len("/index.html")]
    files = {"dir": folder, **{n: storage.join(folder, n) for n in REPORT_FILES}}
    try:
        report = json.loads(storage.read_bytes(files["report.json"]))
    except (OSError, ValueError):
        return None
    if report.get("reuse_key") != key or not storage.exists(files["README.md"]):
        return None
    return ReportResult(out=folder, report=report, files=files, reused=True)


def compute(
    spark,
    cfg: Config,
    tables: Tables,
    snap: Snapshot,
    subset: str | None = None,
    compare: str | None = None,
    probes: bool | None = None,
) -> dict[str, Any]:
    """Every number of the report, as plain JSON-able data (no rendering)."""
    from laion_spark.stage import config_digest

    t0 = time.time()
    steps: dict[str, float] = {}
    last = [t0]

    def lap(name: str) -> None:
        now = time.time()
        steps[name] = round(now - last[0], 3)
        last[0] = now

    counts = stats.dataset_counts(snap, cfg.serve.index or cfg.index.name)
    lap("dataset_counts")
    model_id = stats.report_model_id(counts, cfg)
    runs = stats.latest_runs(snap)
    lap("runs")
    funnel = stats.funnel(counts, cfg, model_id)
    subsets = list(funnel["subsets"])
    if subset is not None and subset not in subsets:
        raise ReportError(
            f"--subset {subset}: no such subset at the snapshot; subsets: "
            f"{', '.join(subsets) or '(none)'}"
        )
    clip = stats.clip_thresholds(cfg, runs, subsets)
    score_thr = stats.score_thresholds(cfg, runs)
    ts = stats.sweep_values(cfg, clip["values"])
    merged = counts["merged"][-1]["path"] if counts["merged"] else None

    pop = stats.population(snap, model_id, subset).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        core = stats.core_metrics(pop, score_thr, sweep=ts, duplicates=True)
        metrics, sweep, dups = core["metrics"], core["sensitivity"], core["duplicates"]
        lap("core_metrics")
        ranked = stats.rankings(pop, cfg.report.top_n)
        lap("rankings")
        hists = stats.histograms(pop, cfg.report.similarity_bins)
        lap("histograms")
        semantic = stats.semantic_duplicates(snap, cfg, pop, metrics["embedded"], funnel, runs)
        lap("semantic_duplicates")
        probe = _probes(spark, cfg, tables, pop, metrics, score_thr, probes, merged, lap)
    finally:
        pop.unpersist()
    compared = (
        _compare(cfg, snap, counts, subset, compare, score_thr, ts, core) if compare else None
    )
    lap("compare")
    takedowns = stats.takedowns(counts)
    for kind, rows in ranked.items():
        whole = metrics["scored"] if kind in ("flag", "nsfw_tag") else metrics["rows"]
        for r in rows:
            r["share"] = stats.share(r["count"], whole)
    toxicity = stats.model_refs(ranked)
    toxicity.update(
        {
            "threshold": score_thr["toxicity_threshold"],
            "scored": metrics["toxicity_n"],
            "toxic": metrics["toxic"],
            "rate": metrics["toxic_share"],
        }
    )
    return {
        "report_format": REPORT_FORMAT,
        "generated": {
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "stats_seconds": round(time.time() - t0, 3),
            "step_seconds": steps,
        },
        "as_of": snap.as_of,
        "tables": snap.describe(),
        "subset": subset,
        "model_id": model_id,
        "thresholds": {"clip": clip, "score": score_thr},
        "population": metrics,
        "funnel": funnel,
        "rankings": ranked,
        "histograms": hists,
        "toxicity": toxicity,
        "duplicates": {**dups, "semantic": semantic},
        "takedowns": takedowns,
        "sensitivity": sweep,
        "probes": probe,
        "compare": compared,
        "runs": runs,
        "config": {
            "digest": config_digest(cfg),
            "workdir": cfg.workdir_path,
            "report": dataclasses.asdict(cfg.report),
        },
    }


def _probes(
    spark, cfg, tables, pop, metrics, score_thr, enabled, merged_path, lap
) -> dict[str, Any]:
    from laion_spark.report import probes as pr

    if not (cfg.report.probes if enabled is None else enabled):
        return {"status": "off", "terms": []}
    terms = pr.load_terms(cfg.report.terms)
    thr = score_thr["toxicity_threshold"]
    caption = pr.caption_probes(pop, terms, thr)
    lap("caption_probes")
    if cfg.report.index_probes:
        index = pr.index_probes(spark, cfg, tables, pop, terms, thr, merged_path)
    else:
        index = {"status": "skipped", "why": "report.index_probes=false", "terms": {}}
    lap("index_probes")
    for figures in caption.values():
        figures["elevation"] = pr.elevation(figures, metrics)
    for figures in index.get("terms", {}).values():
        figures["elevation"] = pr.elevation(figures, metrics)
    return {
        "status": "ok",
        "terms_file": str(cfg.report.terms or pr.DEFAULT_TERMS),
        "terms": terms,
        "baseline": {
            "tagged": metrics["tagged"],
            "nsfw_share": metrics["nsfw_share"],
            "unsure_share": metrics["unsure_share"],
            "nsfw_or_unsure_share": stats.share(
                metrics["NSFW"] + metrics["UNSURE"], metrics["tagged"]
            ),
            "punsafe_mean": metrics["punsafe_mean"],
            "toxic_share": metrics["toxic_share"],
        },
        "caption": caption,
        "index": index,
    }


def _compare(cfg, snap, counts, subset, other, score_thr, ts, core_a) -> dict[str, Any]:
    """The same safety figures for a second population: another subset at the same versions,
    or the same subset at other versions (--compare accepts either). Side A is the report's
    own population: its figures (`core_a`) are reused, not computed again."""
    subsets = list(counts["subsets"])
    if other in subsets:
        b_snap, b_subset, b_label = snap, other, f"subset {other}"
    else:
        try:
            b_snap = Snapshot.resolve(snap.tables, other)
        except AsOfError as e:
            raise ReportError(
                f"--compare {other}: not a subset ({', '.join(subsets) or 'none'}) and not a "
                f"version: {e}"
            ) from None
        b_subset, b_label = subset, f"{subset or 'all candidates'} as of {other}"
    a_label = f"subset {subset}" if subset else "all candidates"
    sides = {}
    for side, (s, sub, label) in {
        "a": (snap, subset, a_label),
        "b": (b_snap, b_subset, b_label),
    }.items():
        side_counts = (
            counts if s is snap else stats.dataset_counts(s, cfg.serve.index or cfg.index.name)
        )
        if sub is not None and sub not in side_counts["subsets"]:
            raise ReportError(f"--compare {other}: subset {sub} does not exist at {label}")
        if side == "a":
            core = core_a
        else:
            pop = stats.population(s, stats.report_model_id(side_counts, cfg), sub)
            core = stats.core_metrics(pop, score_thr, sweep=ts)
        sides[side] = {
            "label": label,
            "subset": sub,
            "versions": dict(sorted(s.versions.items())),
            "metrics": core["metrics"],
            "sensitivity": core["sensitivity"],
        }
    keys = ("rows", "nsfw_share", "unsure_share", "drop_share", "punsafe_mean", "toxic_share")
    diff = {}
    for k in keys:
        a, b = sides["a"]["metrics"].get(k), sides["b"]["metrics"].get(k)
        diff[k] = stats.rnd(b - a) if a is not None and b is not None else None
    return {**sides, "difference_b_minus_a": diff}


def safe_thumbnails(snap: Snapshot, tables: Tables, cfg: Config, report: dict) -> list[dict]:
    """Up to report.thumbnails images whose punsafe is known and below the threshold, tagged
    UNLIKELY (or untagged), without a drop flag and not taken down. Nothing else, ever."""
    from laion_spark.takedown.rules import is_taken_down, load_rules

    n = int(cfg.report.thumbnails)
    thr = report["thresholds"]["score"]["punsafe_threshold"]
    pop = stats.population(snap, report["model_id"], report["subset"])
    safe = pop.where(
        F.col("punsafe").isNotNull()
        & (F.col("punsafe") < F.lit(thr))
        & (F.col("nsfw_tag").isNull() | (F.col("nsfw_tag") == "UNLIKELY"))
        & ~F.coalesce(F.array_contains("flags", "drop"), F.lit(False))
        & (F.col("image_status") == "success")
    )
    picked: DataFrame = safe.select("sample_id", "url").orderBy("sample_id").limit(4 * n)
    images = snap.read("images").select("sample_id", "image", "format", "sha256")
    rows = picked.join(images, "sample_id").orderBy("sample_id").collect()
    rules = load_rules(tables)  # today's takedowns, even for an older snapshot
    out = []
    for r in rows:
        if r["image"] is None or is_taken_down(rules, r["url"], r["sample_id"]):
            continue
        if r["sha256"] and r["sha256"].lower() in rules.sha256:
            continue
        fmt = (r["format"] or "jpeg").lower()
        mime = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
        out.append(
            {
                "sample_id": r["sample_id"],
                "mime": mime.get(fmt, "image/jpeg"),
                "b64": base64.b64encode(bytes(r["image"])).decode("ascii"),
            }
        )
        if len(out) >= n:
            break
    return out


def write_report(report: dict[str, Any], out: str, thumbs: list[dict]) -> dict[str, str]:
    """Draw the plots and write index.html, README.md and report.json under `out`."""
    from laion_spark.report.card import render_card
    from laion_spark.report.html import render_html
    from laion_spark.report.plots import draw_all

    plots = draw_all(report)
    # report.json first: a folder counts as a report (output.latest_report) once index.html,
    # written last, is there
    files = {
        "report.json": json.dumps(report, indent=2, sort_keys=True, default=str),
        "README.md": render_card(report),
        "index.html": render_html(report, plots, thumbs),
    }
    paths = {"dir": out}
    for name, text in files.items():
        path = storage.join(out, name)
        storage.write_bytes(path, text.encode("utf-8"))
        paths[name] = path
    return paths

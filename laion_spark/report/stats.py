"""The report's numbers, aggregated in Spark from one snapshot of the tables.

Nothing here collects rows: every function returns plain dicts of counts, rates and
fixed-bin histograms (bins computed in Spark), at most `top_n` rows per ranking. The
*population* is what the report describes: every candidate (left-joined with its image
row, its embedding of one model and its scores), or the members of one subset. Each
figure counts the rows where it is defined and says so (`n`).

Stored stats are read where they are enough: pages and rejection reasons come from
`extract_stats` (counted once by extract), thresholds and configs from `runs`. Table
sizes are counted at the pinned version, because `runs` holds per-run increments and a
takedown deletes rows without a run of the stage that wrote them.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from laion_spark.config import Config
from laion_spark.report.snapshot import Snapshot
from laion_spark.settings import ConfigError

TAGS = ("UNLIKELY", "UNSURE", "NSFW")
NONE = "(none)"
# fixed bins: (column, lo, hi, bins); similarity gets report.similarity_bins over [-1, 1]
SCORE_BINS = {
    "punsafe": (0.0, 1.0, 20),
    "pwatermark": (0.0, 1.0, 20),
    "aesthetic": (0.0, 10.0, 20),
    "toxicity": (0.0, 1.0, 20),
}
SIZE_BINS = (0.0, 4096.0, 32)  # 128 px per bin; larger sides land in the last bin
ASPECT_BINS = (-3.0, 3.0, 24)  # log2(width / height): 1/8 .. 8
CAPTION_BINS = (0.0, 400.0, 40)


def rnd(x: Any, digits: int = 6) -> Any:
    """Floats rounded (so a re-run compares equal in JSON), NaN/inf as None."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else round(x, digits)


def share(part: Any, whole: Any) -> float | None:
    return rnd(part / whole) if part is not None and whole else None


# ---------------------------------------------------------------- which model, thresholds


def report_model_id(counts: dict[str, Any], cfg: Config) -> str | None:
    """The embeddings model whose similarity the report shows: report.model_id, else
    curate.model_id, else the only one in the snapshot, else the configured embed model."""
    explicit = cfg.report.model_id or cfg.curate.model_id
    if explicit:
        return explicit
    models = sorted(counts["embed"])
    if len(models) <= 1:
        return models[0] if models else None
    try:
        from laion_spark.models.clip import load_clip

        configured = load_clip(cfg.embed).model_id
    except Exception:  # weights not on this driver
        configured = None
    if configured in models:
        return configured
    raise ConfigError(f"report.model_id: embeddings hold several models {models}; set one")


def latest_runs(snap: Snapshot) -> list[dict]:
    """The latest `runs` row of each stage at the snapshot, JSON fields parsed."""
    if not snap.exists("runs"):
        return []
    w = Window.partitionBy("stage").orderBy(F.col("started_at").desc(), F.col("run_id").desc())
    rows = (
        snap.read("runs")
        .withColumn("_n", F.row_number().over(w))
        .where("_n = 1")
        .orderBy("started_at", "run_id")
        .collect()
    )
    out = []
    for r in rows:
        out.append(
            {
                "stage": r["stage"],
                "run_id": r["run_id"],
                "status": r["status"],
                "started_at": r["started_at"].isoformat() if r["started_at"] else None,
                "seconds": rnd(r["seconds"], 3),
                "rows_in": r["rows_in"],
                "rows_out": r["rows_out"],
                "by_status": dict(sorted((r["by_status"] or {}).items())),
                "notes": {k: _json(v) for k, v in sorted((r["notes"] or {}).items())},
                "config_digest": r["config_digest"],
                "stage_config": _json(r["stage_config"]),
            }
        )
    return out


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text is not None else None
    except ValueError:
        return text


def clip_thresholds(cfg: Config, runs: list[dict], subsets: list[str]) -> dict[str, Any]:
    """Per language group thresholds to mark: what the last curate run applied (its notes),
    else curate.clip_thresholds, else LAION-5B's defaults (labelled as such)."""
    from laion_spark.curate.registry import definition

    curate = next((r for r in runs if r["stage"] == "curate"), None)
    names = []
    for name in [*subsets, *cfg.curate.filters]:
        try:
            if definition(cfg, name)["kind"] == "clip_threshold" and name not in names:
                names.append(name)
        except KeyError:
            continue
    if curate:
        for name in names:
            prefix = f"{name}_threshold_"
            got = {
                k[len(prefix) :]: float(v)
                for k, v in curate["notes"].items()
                if k.startswith(prefix) and isinstance(v, int | float)
            }
            if got:
                return {"values": got, "source": f"applied by curate filter {name} (runs)"}
    if cfg.curate.clip_thresholds:
        return {"values": dict(cfg.curate.clip_thresholds), "source": "curate.clip_thresholds"}
    from laion_spark.models.clip import LAION_THRESHOLDS

    return {
        "values": {"en": LAION_THRESHOLDS["en"], "*": LAION_THRESHOLDS["multi"]},
        "source": "LAION-5B defaults (no curate run recorded)",
    }


def threshold_for(values: dict[str, float], group: str) -> float | None:
    return values.get(group, values.get("*", values.get("multi")))


def score_thresholds(cfg: Config, runs: list[dict]) -> dict[str, float]:
    """punsafe / pwatermark / toxicity thresholds the score stage applied (its run's config),
    else the configured ones."""
    sc = next((r for r in runs if r["stage"] == "score"), None)
    applied = (sc or {}).get("stage_config") or {}
    out = {}
    for key in ("punsafe_threshold", "pwatermark_threshold", "toxicity_threshold"):
        v = applied.get(key) if isinstance(applied, dict) else None
        out[key] = float(v if v is not None else getattr(cfg.score, key))
    return out


# ---------------------------------------------------------------- the population


def population(
    snap: Snapshot, model_id: str | None, subset: str | None = None
) -> DataFrame:
    """One row per sample: candidate ⟕ image ⟕ embedding (model) ⟕ scores [⋈ subset]."""
    cand = snap.read("candidates").select(
        "sample_id",
        "url",
        "text",
        "language",
        "language_group",
        "license",
        F.col("original_width").alias("_cw"),
        F.col("original_height").alias("_ch"),
    )
    img = snap.read("images").select(
        "sample_id",
        F.col("status").alias("image_status"),
        "width",
        "height",
        F.col("original_width").alias("_iw"),
        F.col("original_height").alias("_ih"),
        "sha256",
    )
    emb = snap.read("embeddings")
    if model_id is not None:
        emb = emb.where(F.col("model_id") == model_id)
    emb = emb.select(
        "sample_id",
        "similarity",
        F.coalesce(F.col("status"), F.lit("success")).alias("embed_status"),
    ).dropDuplicates(["sample_id"])
    sc = snap.read("scores").select(
        "sample_id",
        F.lit(True).alias("scored"),
        "punsafe",
        "pwatermark",
        "toxicity",
        "aesthetic",
        "nsfw_tag",
        "flags",
        F.col("score_models").getItem("toxicity").alias("toxicity_model"),
    )
    pop = cand.join(img, "sample_id", "left").join(emb, "sample_id", "left")
    pop = pop.join(sc, "sample_id", "left")
    if subset is not None:
        members = snap.read("subsets").where(F.col("subset") == subset)
        pop = pop.join(members.select("sample_id", "repeat"), "sample_id")
    host = F.lower(F.try_parse_url(F.col("url"), F.lit("HOST")))
    return (
        pop.withColumn("original_width", F.coalesce("_cw", "_iw"))
        .withColumn("original_height", F.coalesce("_ch", "_ih"))
        .drop("_cw", "_ch", "_iw", "_ih")
        .withColumn("scored", F.coalesce(F.col("scored"), F.lit(False)))
        .withColumn("domain", F.regexp_replace(host, r"^www\.", ""))
        # a similarity only counts for an embedding that succeeded
        .withColumn(
            "similarity",
            F.when(F.col("embed_status") == "success", F.col("similarity")),
        )
    )


# ---------------------------------------------------------------- scalar metrics


def _is(col: str, value: str) -> Column:
    return F.sum(F.when(F.col(col) == value, 1).otherwise(0))


def core_metrics(
    pop: DataFrame,
    thresholds: dict[str, float],
    sweep: list[float] | None = None,
    duplicates: bool = False,
) -> dict[str, Any]:
    """The safety and size figures of a population, with the threshold sweep and the
    duplicate counts when asked, in ONE pass (also used by --compare).

    Returns {"metrics": {...}, "sensitivity": {...} (if sweep), "duplicates": {...}}."""
    pu, pw, tx = (
        thresholds["punsafe_threshold"],
        thresholds["pwatermark_threshold"],
        thresholds["toxicity_threshold"],
    )
    drop = F.coalesce(F.array_contains("flags", "drop"), F.lit(False))
    aggs = [
        F.count("*").alias("rows"),
        _is("image_status", "success").alias("images_ok"),
        F.count("similarity").alias("embedded"),
        F.sum(F.col("scored").cast("int")).alias("scored"),
        F.count("nsfw_tag").alias("tagged"),
        *[_is("nsfw_tag", t).alias(t) for t in TAGS],
        F.sum(drop.cast("int")).alias("drop"),
        F.count("punsafe").alias("punsafe_n"),
        F.avg("punsafe").alias("punsafe_mean"),
        F.sum(F.when(F.col("punsafe") > pu, 1).otherwise(0)).alias("punsafe_over"),
        F.count("pwatermark").alias("pwatermark_n"),
        F.avg("pwatermark").alias("pwatermark_mean"),
        F.sum(F.when(F.col("pwatermark") > pw, 1).otherwise(0)).alias("pwatermark_over"),
        F.count("aesthetic").alias("aesthetic_n"),
        F.avg("aesthetic").alias("aesthetic_mean"),
        F.count("toxicity").alias("toxicity_n"),
        F.sum(F.when(F.col("toxicity") > tx, 1).otherwise(0)).alias("toxic"),
        F.avg("similarity").alias("similarity_mean"),
    ]
    means = ("punsafe_mean", "pwatermark_mean", "aesthetic_mean", "similarity_mean")
    if duplicates:
        aggs += _duplicate_aggs()
    sim, tag, tox = F.col("similarity"), F.col("nsfw_tag"), F.col("toxicity")
    for i, t in enumerate(sweep or []):
        keep = sim >= F.lit(t)
        aggs += [
            F.sum(F.when(keep, 1).otherwise(0)).alias(f"sw_k{i}"),
            F.sum(F.when(keep & tag.isNotNull(), 1).otherwise(0)).alias(f"sw_g{i}"),
            F.sum(F.when(keep & (tag == "NSFW"), 1).otherwise(0)).alias(f"sw_n{i}"),
            F.sum(F.when(keep & (tag == "UNSURE"), 1).otherwise(0)).alias(f"sw_u{i}"),
            F.sum(F.when(keep & tox.isNotNull(), 1).otherwise(0)).alias(f"sw_s{i}"),
            F.sum(F.when(keep & (tox > tx), 1).otherwise(0)).alias(f"sw_x{i}"),
        ]
    row = pop.agg(*aggs).first().asDict()
    m: dict[str, Any] = {}
    for k in ("rows", "images_ok", "embedded", "scored", "tagged", *TAGS, "drop", "punsafe_n",
              "punsafe_over", "pwatermark_n", "pwatermark_over", "aesthetic_n", "toxicity_n",
              "toxic"):
        m[k] = int(row[k] or 0)
    for k in means:
        m[k] = rnd(row[k])
    m.update(
        {
            "nsfw_share": share(m["NSFW"], m["tagged"]),
            "unsure_share": share(m["UNSURE"], m["tagged"]),
            "unlikely_share": share(m["UNLIKELY"], m["tagged"]),
            "drop_share": share(m["drop"], m["tagged"]),
            "punsafe_over_share": share(m["punsafe_over"], m["punsafe_n"]),
            "pwatermark_over_share": share(m["pwatermark_over"], m["pwatermark_n"]),
            # the audit's hate content rate: share of scored captions the text scorer flags
            "toxic_share": share(m["toxic"], m["toxicity_n"]),
        }
    )
    out: dict[str, Any] = {"metrics": m}
    if duplicates:
        out["duplicates"] = _duplicates(row)
    if sweep is not None:
        points = []
        for i, t in enumerate(sweep):
            k, g, n, u, s_, x = (int(row[f"sw_{c}{i}"] or 0) for c in "kgnusx")
            points.append(
                {
                    "threshold": t,
                    "kept": k,
                    "tagged": g,
                    "nsfw": n,
                    "unsure": u,
                    "toxicity_n": s_,
                    "toxic": x,
                    "nsfw_share": share(n, g),
                    "unsure_share": share(u, g),
                    "toxic_share": share(x, s_),
                }
            )
        out["sensitivity"] = {"thresholds": list(sweep), "points": points}
    return out


def _duplicate_aggs() -> list[Column]:
    return [
        F.count("sha256").alias("with_sha256"),
        F.countDistinct("sha256").alias("distinct_sha256"),
        F.count(F.when(F.col("url").isNotNull() & F.col("text").isNotNull(), 1)).alias(
            "with_url_text"
        ),
        F.countDistinct("url", "text").alias("distinct_url_text"),
        F.countDistinct("domain").alias("distinct_domains"),
        F.countDistinct("language").alias("distinct_languages"),
    ]


def _duplicates(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("with_sha256", "distinct_sha256", "with_url_text", "distinct_url_text",
            "distinct_domains", "distinct_languages")
    d = {k: int(row[k] or 0) for k in keys}
    d["exact_image_duplicates"] = d["with_sha256"] - d["distinct_sha256"]
    d["exact_url_caption_duplicates"] = d["with_url_text"] - d["distinct_url_text"]
    return d


# ---------------------------------------------------------------- rankings


def rankings(pop: DataFrame, top_n: int) -> dict[str, list[dict]]:
    """Top `top_n` values (count desc, value asc) of each categorical column, one job."""
    kinds = {
        "language_group": F.col("language_group"),
        "language": F.col("language"),
        "domain": F.col("domain"),
        "license": F.col("license"),
        "image_status": F.col("image_status"),
        "toxicity_model": F.col("toxicity_model"),
    }
    parts = [
        pop.select(F.lit(k).alias("kind"), F.coalesce(c, F.lit(NONE)).alias("key"))
        for k, c in kinds.items()
    ]
    parts.append(
        pop.where(F.col("flags").isNotNull()).select(
            F.lit("flag").alias("kind"), F.explode("flags").alias("key")
        )
    )
    parts.append(
        pop.where(F.col("scored")).select(
            F.lit("nsfw_tag").alias("kind"), F.coalesce("nsfw_tag", F.lit(NONE)).alias("key")
        )
    )
    allrows = parts[0]
    for p in parts[1:]:
        allrows = allrows.unionByName(p)
    counted = allrows.groupBy("kind", "key").count()
    w = Window.partitionBy("kind").orderBy(F.col("count").desc(), F.col("key"))
    top = counted.withColumn("_n", F.row_number().over(w)).where(F.col("_n") <= top_n)
    out: dict[str, list[dict]] = {k: [] for k in [*kinds, "flag", "nsfw_tag"]}
    for r in top.orderBy("kind", "_n").collect():
        out[r["kind"]].append({"key": r["key"], "count": int(r["count"])})
    return out


# ---------------------------------------------------------------- histograms


def _bin_struct(name: str, group: Column, x: Column, lo: float, hi: float, bins: int) -> Column:
    width = (hi - lo) / bins
    raw = F.floor((x.cast("double") - F.lit(lo)) / F.lit(width)).cast("int")
    clipped = F.least(F.greatest(raw, F.lit(0)), F.lit(bins - 1))
    edge = F.when(raw < 0, -1).when(raw >= bins, 1).otherwise(0)
    return F.when(
        x.isNotNull() & ~F.isnan(x.cast("double")),
        F.struct(F.lit(name).alias("h"), group.alias("g"), clipped.alias("b"), edge.alias("e")),
    )


def histograms(pop: DataFrame, similarity_bins: int) -> dict[str, dict]:
    """Fixed-bin histograms of every numeric figure, in one Spark job.

    Keys: `similarity:<language group>`, punsafe, pwatermark, aesthetic, toxicity,
    width, height (original size), aspect (log2 w/h), caption_chars. Values outside
    [lo, hi) are counted in the end bins and reported as clipped_low / clipped_high."""
    specs: dict[str, tuple[float, float, int]] = {}
    structs = []
    none = F.lit("all")
    group = F.coalesce(F.col("language_group"), F.lit(NONE))
    structs.append(_bin_struct("similarity", group, F.col("similarity"), -1.0, 1.0, similarity_bins))
    for col, (lo, hi, bins) in SCORE_BINS.items():
        specs[col] = (lo, hi, bins)
        structs.append(_bin_struct(col, none, F.col(col), lo, hi, bins))
    w, h = F.col("original_width").cast("double"), F.col("original_height").cast("double")
    for name, col in (("width", w), ("height", h)):
        specs[name] = SIZE_BINS
        structs.append(_bin_struct(name, none, col, *SIZE_BINS))
    specs["aspect"] = ASPECT_BINS
    aspect = F.when((w > 0) & (h > 0), F.log2(w / h))
    structs.append(_bin_struct("aspect", none, aspect, *ASPECT_BINS))
    specs["caption_chars"] = CAPTION_BINS
    structs.append(_bin_struct("caption_chars", none, F.length("text"), *CAPTION_BINS))
    exploded = pop.select(F.explode(F.array(*structs)).alias("s")).where(F.col("s").isNotNull())
    rows = exploded.groupBy("s.h", "s.g", "s.b", "s.e").count().collect()
    out: dict[str, dict] = {}
    for r in rows:
        key = r["h"] if r["h"] != "similarity" else f"similarity:{r['g']}"
        lo, hi, bins = specs.get(r["h"], (-1.0, 1.0, similarity_bins))
        hist = out.setdefault(
            key,
            {"lo": lo, "hi": hi, "bins": bins, "counts": [0] * bins, "n": 0,
             "clipped_low": 0, "clipped_high": 0},
        )
        hist["counts"][r["b"]] += int(r["count"])
        hist["n"] += int(r["count"])
        if r["e"] < 0:
            hist["clipped_low"] += int(r["count"])
        elif r["e"] > 0:
            hist["clipped_high"] += int(r["count"])
    return dict(sorted(out.items()))


# ---------------------------------------------------------------- threshold sensitivity


def sweep_values(cfg: Config, thresholds: dict[str, float]) -> list[float]:
    if cfg.report.sweep:
        start, stop, step = cfg.report.sweep
    else:
        center = threshold_for(thresholds, "en")
        center = 0.28 if center is None else center
        start, stop, step = center - 0.08, center + 0.08, 0.01
    n = int(math.floor((stop - start) / step + 1e-9)) + 1
    return [round(start + i * step, 6) for i in range(n)]


# ---------------------------------------------------------------- whole-dataset tables


def _row(kind: str, key: Column | str | None, sub: Column | str | None, n: Column,
         m: Column | None = None) -> list[Column]:
    def text(v):
        return v.cast("string") if isinstance(v, Column) else F.lit(v).cast("string")

    return [
        F.lit(kind).alias("kind"),
        text(key).alias("key"),
        text(sub).alias("sub"),
        n.cast("long").alias("n"),
        (m if m is not None else F.lit(None)).cast("long").alias("m"),
    ]


def dataset_counts(snap: Snapshot, index_name: str) -> dict[str, Any]:
    """Whole-dataset counts for the funnel, takedowns, the model and the index, read at the
    snapshot in ONE Spark job (a union of small aggregates): every figure here is a
    group-by with few groups, so only those groups reach the driver."""
    ex = snap.read("extract_stats")
    totals = ex.agg(
        F.count("*").alias("files"),
        *[F.sum(c).alias(c) for c in ("records", "pages", "pairs", "bad_records")],
    )
    parts = [
        totals.select(
            F.explode(
                F.array(
                    *[
                        F.struct(*_row("extract", c, None, F.coalesce(F.col(c), F.lit(0))))
                        for c in ("files", "records", "pages", "pairs", "bad_records")
                    ]
                )
            ).alias("r")
        ).select("r.*")
    ]
    for col in ("rejected", "errors"):
        parts.append(
            ex.select(F.explode(col).alias("k", "v"))
            .groupBy("k")
            .agg(F.sum("v").alias("v"))
            .select(*_row(col, F.col("k"), None, F.col("v")))
        )
    parts.append(snap.read("candidates").agg(F.count("*").alias("n")).select(
        *_row("candidates", None, None, F.col("n"))
    ))
    parts.append(
        snap.read("images").groupBy("status").count()
        .select(*_row("download", F.coalesce("status", F.lit(NONE)), None, F.col("count")))
    )
    parts.append(
        snap.read("embeddings")
        .groupBy("model_id", F.coalesce("status", F.lit("success")).alias("s"))
        .count()
        .select(*_row("embed", F.col("model_id"), F.col("s"), F.col("count")))
    )
    parts.append(snap.read("scores").agg(F.count("*").alias("n")).select(
        *_row("scores", None, None, F.col("n"))
    ))
    parts.append(
        snap.read("subsets").groupBy("subset")
        .agg(F.count("*").alias("n"), F.sum("repeat").alias("m"))
        .select(*_row("subset", F.col("subset"), None, F.col("n"), F.col("m")))
    )
    td = snap.read("takedowns")
    parts.append(td.groupBy("kind").count().select(*_row("takedown", F.col("kind"), None, F.col("count"))))
    parts.append(
        td.select(F.explode("removed").alias("k", "v"))
        .groupBy("k")
        .agg(F.sum("v").alias("v"))
        .select(*_row("removed", F.col("k"), None, F.col("v")))
    )
    parts.append(
        snap.read("index_manifest")
        .where((F.col("index_name") == index_name) & (F.col("kind") == "merged"))
        .select(*_row("merged", F.col("path"), None, F.col("count"), F.unix_micros("created_at")))
    )
    union = parts[0]
    for p in parts[1:]:
        union = union.unionByName(p)
    out: dict[str, Any] = {
        "extract": {}, "rejected": {}, "errors": {}, "candidates": 0, "download": {},
        "embed": {}, "scores": 0, "subsets": {}, "takedown": {}, "removed": {}, "merged": [],
    }
    for r in union.collect():
        kind, key, n = r["kind"], r["key"], int(r["n"] or 0)
        if kind in ("candidates", "scores"):
            out[kind] = n
        elif kind == "embed":
            out["embed"].setdefault(key, {})[r["sub"]] = n
        elif kind == "subset":
            out["subsets"][key] = {"samples": n, "draws": int(r["m"] or 0)}
        elif kind == "merged":
            out["merged"].append({"path": key, "count": n, "created_us": r["m"]})
        else:
            out[kind][key] = n
    for kind in ("rejected", "errors", "download", "takedown", "removed"):
        out[kind] = dict(sorted(out[kind].items(), key=lambda kv: (-kv[1], kv[0])))
    out["subsets"] = dict(sorted(out["subsets"].items()))
    out["merged"].sort(key=lambda m: (m["created_us"] or 0, m["path"]))
    return out


def funnel(counts: dict[str, Any], cfg: Config, model_id: str | None) -> dict[str, Any]:
    """pages -> candidates -> downloaded -> embedded -> scored -> filtered -> each subset,
    over the whole dataset (never restricted to --subset)."""
    ex = {k: counts["extract"].get(k, 0) for k in ("files", "records", "pages", "pairs", "bad_records")}
    embed_status = dict(
        sorted(
            (counts["embed"].get(model_id) or {}).items() if model_id else [],
            key=lambda kv: (-kv[1], kv[0]),
        )
    )
    subsets = counts["subsets"]
    clip_subset = _clip_subset(cfg, list(subsets))
    steps = [
        {"step": "pages", "count": ex["pages"], "source": "extract_stats"},
        {"step": "candidates", "count": counts["candidates"], "source": "candidates"},
        {"step": "downloaded", "count": counts["download"].get("success", 0), "source": "images"},
        {"step": "embedded", "count": embed_status.get("success", 0), "source": "embeddings"},
        {"step": "scored", "count": counts["scores"], "source": "scores"},
    ]
    if clip_subset:
        steps.append(
            {
                "step": f"filtered ({clip_subset})",
                "count": subsets[clip_subset]["samples"],
                "source": "subsets",
            }
        )
    for name, sub in subsets.items():
        if name != clip_subset:
            steps.append({"step": f"subset {name}", "count": sub["samples"], "source": "subsets"})
    return {
        "steps": steps,
        "extract": {**ex, "rejected": counts["rejected"], "errors": counts["errors"]},
        "download_status": counts["download"],
        "embed_status": embed_status,
        "subsets": subsets,
        "clip_subset": clip_subset,
    }


def _clip_subset(cfg: Config, names: list[str]) -> str | None:
    from laion_spark.curate.registry import definition

    for name in names:
        try:
            if definition(cfg, name)["kind"] == "clip_threshold":
                return name
        except KeyError:
            continue
    return None


def takedowns(counts: dict[str, Any]) -> dict[str, Any]:
    return {
        "requests": sum(counts["takedown"].values()),
        "by_kind": dict(sorted(counts["takedown"].items())),
        "removed_rows": dict(sorted(counts["removed"].items())),
    }


def semantic_duplicates(
    snap: Snapshot,
    cfg: Config,
    pop: DataFrame,
    embedded: int,
    funnel_: dict[str, Any],
    runs: list[dict],
) -> dict[str, Any]:
    """SemDeDup's result where a `semdedup` curate filter ran: embedded samples of the
    population it did not keep. Not recomputed here (it needs k-means over embeddings)."""
    from laion_spark.curate.registry import definition

    names = []
    for name in funnel_["subsets"]:
        try:
            if definition(cfg, name)["kind"] == "semdedup":
                names.append(name)
        except KeyError:
            continue
    if not names:
        return {"computed": False, "why": "no semdedup subset; add semdedup to curate.filters"}
    name = names[0]
    members = snap.read("subsets").where(F.col("subset") == name).select("sample_id")
    kept = pop.where(F.col("similarity").isNotNull()).join(members, "sample_id").count()
    curate = next((r for r in runs if r["stage"] == "curate"), None)
    applied = (curate or {}).get("stage_config") or {}
    eps = applied.get("semdedup_eps", cfg.curate.semdedup_eps) if isinstance(applied, dict) else None
    return {
        "computed": True,
        "subset": name,
        "eps": eps,
        "embedded": embedded,
        "kept": kept,
        "removed": embedded - kept,
        "removed_share": share(embedded - kept, embedded),
    }


def model_refs(ranked: dict[str, list[dict]]) -> dict[str, Any]:
    """What scored the toxicity column: a classifier, or the word list (labelled as such)."""
    refs = {r["key"]: r["count"] for r in ranked.get("toxicity_model", []) if r["key"] != NONE}
    if not refs:
        kind = "absent"
    elif all(k.startswith("wordlist:") for k in refs):
        kind = "word list"
    elif any(k.startswith("wordlist:") for k in refs):
        kind = "mixed"
    elif all(k.startswith("absent") for k in refs):
        kind = "absent"
    else:
        kind = "classifier"
    labels = {
        "word list": "word-list fallback (whole-word matches of a profanity list, not a "
        "classifier: it cannot see context)",
        "mixed": "partly a classifier, partly the word-list fallback",
        "classifier": "text classifier",
        "absent": "no toxicity scorer ran",
    }
    return {"kind": kind, "label": labels[kind], "models": refs}


_SAFE_KEY = re.compile(r"[^a-z0-9_:*.-]+")


def key(text: str) -> str:
    """A histogram/plot key safe in file names and HTML ids."""
    return _SAFE_KEY.sub("_", text.lower())

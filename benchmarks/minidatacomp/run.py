"""Mini-DataComp: which curated subset trains the better student CLIP, with confidence?

    nice -n 19 .venv/bin/python -m benchmarks.minidatacomp.run [--pool 24000] [--seeds 5]

1. harness.build_world: a 24k generated pool with web-data noise in known proportions and
   a long tail of rare shapes; frozen random-conv features of every picture; two scorer
   CLIPs trained on separate clean pairs (DataComp's L/14 and B/32 stand-ins); labelled
   sets for the product's punsafe / pwatermark / aesthetic heads.
2. Delta tables written the way the product fills them: candidates (with the second
   model's similarity as imported metadata, caption length/quality), embeddings (scorer L),
   then the product's score stage (heads trained with laion_spark.models.heads) -> scores.
3. The product's curate stage (laion_spark.curate.stage.run) computes every selection:
   dedup cluster sizes, FLYT and M-FLYT (early-stopped on their validation gain), DataComp
   baselines, SCS / HCS samplers and an SCS temperature x alpha grid.
4. Every selection trains a student for the same samples seen, 5 paired seeds; metrics on
   held-out pictures: 4 zero-shot tasks + 2 retrieval directions; paired bootstrap CIs.
5. The table and analysis go to --out (docs/benchmarks_curate.md); one `result:` line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.minidatacomp import harness as H
from benchmarks.minidatacomp import pool as P
from benchmarks.minidatacomp import stats as ST

METRICS = ["color", "shape", "position", "background", "i2t_r@5", "t2i_r@5"]
CHANCE = {"color": 1 / 8, "shape": 1 / 12, "position": 1 / 5, "background": 1 / 4}
MFLYT_COLUMNS = [
    "similarity",  # scorer L cosine (embeddings table)
    "clip_b_similarity_score",  # scorer B cosine (imported metadata column)
    "flyt_score",
    "punsafe",
    "pwatermark",
    "aesthetic",
    "toxicity",
    "caption_words",
    "caption_quality",
    "dedup_cluster_size",
]
# (label, subset name); the order is the table's
METHODS = [
    ("no filter", "no_filter"),
    ("basic", "basic"),
    ("CLIP score (L) top-30%", "clip_top30"),
    ("CLIP score (B) top-30%", "clip_b_top30"),
    ("image-based", "image_based"),
    ("image-based ∩ CLIP (L) top-30%", "image_based_and_clip30"),
    ("SemDeDup", "semdedup"),
    ("FLYT top-30%", "flyt_top30"),
    ("FLYT + SCS", "flyt_scs"),
    ("M-FLYT top-30%", "mflyt_top30"),
    ("M-FLYT + SCS", "mflyt_scs"),
    ("M-FLYT + HCS (cap 10)", "mflyt_hcs"),
]
DIAGNOSTIC = [("(oracle) clean pairs only", "oracle_clean"), ("(control) random 30%", "random30")]
SCS_TEMPS = [0.5, 1.0, 2.0, 4.0]
SCS_ALPHAS = [0.1, 0.2, 0.4]


def grid_name(t: float, a: float) -> str:
    return f"scs_t{str(t).replace('.', 'p')}_a{str(a).replace('.', 'p')}"


def definitions(samples_seen: int, hcs_cap: int) -> dict:
    d = {
        "clip_b_top30": {"kind": "clip_top", "column": "clip_b_similarity_score", "fraction": 0.3},
        "image_based_and_clip30": {"kind": "intersect", "of": ["image_based", "clip_top30"]},
        "mflyt": {"kind": "mflyt", "columns": MFLYT_COLUMNS},
        "flyt_top30": {"kind": "clip_top", "column": "flyt_score", "fraction": 0.3},
        "flyt_scs": {"kind": "soft_cap", "column": "flyt_score", "n": samples_seen},
        "mflyt_top30": {"kind": "clip_top", "column": "mflyt_score", "fraction": 0.3},
        "mflyt_scs": {"kind": "soft_cap", "column": "mflyt_score", "n": samples_seen},
        "mflyt_hcs": {
            "kind": "hard_cap",
            "column": "mflyt_score",
            "n": samples_seen,
            "cap": hcs_cap,
        },
    }
    for t in SCS_TEMPS:
        for a in SCS_ALPHAS:
            d[grid_name(t, a)] = {
                "kind": "soft_cap",
                "column": "mflyt_score",
                "n": samples_seen,
                "temperature": t,
                "alpha": a,
            }
    return d


FILTER_ORDER = [
    "no_filter",
    "basic",
    "clip_top30",
    "clip_b_top30",
    "image_based",
    "image_based_and_clip30",
    "semdedup",
    "dedup_size",
    "flyt",
    "flyt_top30",
    "flyt_scs",
    "mflyt",
    "mflyt_top30",
    "mflyt_scs",
    "mflyt_hcs",
]


def write_inputs(spark, cfg, tables, world: H.World, work: Path) -> dict:
    """candidates + embeddings as the product stores them; scores by the product's stage."""
    import pandas as pd

    from laion_spark.ids import sample_id
    from laion_spark.models import heads
    from laion_spark.score.stage import run as score_run

    pool = world.pool
    ids = [sample_id(u, t) for u, t in zip(pool.urls, pool.texts, strict=True)]
    cand = pd.DataFrame(
        {
            "sample_id": ids,
            "url": pool.urls,
            "text": pool.texts,
            "language": pool.language,
            "original_width": np.array(pool.width, np.int32),
            "original_height": np.array(pool.height, np.int32),
            # DataComp ships B/32 and L/14 scores as metadata: the second model arrives so
            "clip_b_similarity_score": world.sim_b.astype(np.float64),
            "caption_words": [float(len(t.split())) for t in pool.texts],
            "caption_quality": [H.caption_quality(t) for t in pool.texts],
        }
    )
    tables.upsert(spark.createDataFrame(cand), "candidates")
    emb = pd.DataFrame(
        {
            "sample_id": ids,
            "model_id": "scorer_l",
            "image_embedding": list(world.emb_img.astype(np.float32)),
            "text_embedding": list(world.emb_txt.astype(np.float32)),
            "similarity": world.sim_l.astype(np.float32),
            "status": "success",
        }
    )
    schema = (
        "sample_id string, model_id string, image_embedding array<float>, "
        "text_embedding array<float>, similarity float, status string"
    )
    tables.upsert(spark.createDataFrame(emb, schema), "embeddings")
    paths = {}
    for kind, (x, y) in world.head_sets.items():
        m = heads.train_mlp(kind, x, y, epochs=60, seed=7)
        paths[kind] = heads.save_head(str(work / f"{kind}.pt"), kind, m)
    cfg.score.nsfw_head = paths["nsfw"]
    cfg.score.watermark_head = paths["watermark"]
    cfg.score.aesthetic_head = paths["aesthetic"]
    cfg.score.zero_shot = False  # no prompt embeddings for the generated world's CLIP
    res = score_run(spark, cfg, tables, model_id="scorer_l")
    return {"ids": ids, "score_stage": res}


def curate(spark, cfg, tables, world: H.World, names: list[str]):
    from laion_spark.curate.stage import run

    targets = {"image_based": world.task_img, "flyt_task": world.flyt_tasks}
    return run(spark, cfg, tables, filters=names, targets=targets)


def read_selections(tables, ids: list[str], names: list[str]) -> dict[str, H.Selection]:
    from laion_spark.curate.subsets import read_subset

    index = {s: i for i, s in enumerate(ids)}
    out = {}
    for name in names:
        rows = read_subset(tables, name).collect()
        pairs = sorted((index[r.sample_id], int(r.repeat)) for r in rows)
        idx = np.array([p[0] for p in pairs], np.int64)
        rep = np.array([p[1] for p in pairs], np.int64)
        out[name] = H.Selection(idx, rep)
    return out


def read_scores(tables, ids: list[str]) -> dict[str, np.ndarray]:
    from laion_spark.curate.pool import build_pool

    index = {s: i for i, s in enumerate(ids)}
    cols = [c for c in MFLYT_COLUMNS + ["mflyt_score"]]
    pdf = build_pool(tables, tables.cfg).select("sample_id", *cols).toPandas()
    out = {}
    order = np.array([index[s] for s in pdf["sample_id"]])
    for c in cols:
        v = np.full(len(ids), np.nan)
        v[order] = pdf[c].astype(float).to_numpy()
        out[c] = v
    return out


def save(path: str, ids, scores, selections, notes) -> None:
    arrays = {f"score/{k}": v for k, v in scores.items()}
    for name, sel in selections.items():
        arrays[f"idx/{name}"] = sel.idx
        arrays[f"rep/{name}"] = sel.repeat
    arrays["ids"] = np.array(ids)
    arrays["notes"] = np.array(json.dumps(notes, default=str))
    np.savez_compressed(path, **arrays)


def load_saved(path: str):
    z = np.load(path, allow_pickle=False)
    scores = {k[6:]: z[k] for k in z.files if k.startswith("score/")}
    sels = {k[4:]: H.Selection(z[k], z["rep/" + k[4:]]) for k in z.files if k.startswith("idx/")}
    return list(z["ids"]), scores, sels, json.loads(str(z["notes"]))


def flyt_overrides(args) -> list[str]:
    """The FLYT settings of the run (diagnose.py retrains with the same ones)."""
    return [
        f"curate.flyt.steps={args.flyt_max_steps}",
        f"curate.flyt.patience={args.flyt_patience}",
        f"curate.flyt.eval_every={args.flyt_eval_every}",
        f"curate.flyt.lr={args.flyt_lr}",
        "curate.flyt.batch_size=256",
        "curate.flyt.hidden=64",
        "curate.flyt.inner_lr=0.5",
        "curate.flyt.temperature=0.07",
    ]


def diagnostic_selections(world: H.World) -> dict[str, H.Selection]:
    """Rows outside the product: the clean-pairs oracle (a ceiling) and a random 30%."""
    kinds = np.array(world.pool.kinds)
    clean = np.flatnonzero(kinds == "clean")
    rnd = np.sort(np.random.default_rng(4242).permutation(len(kinds))[: int(0.3 * len(kinds))])
    return {
        "oracle_clean": H.Selection(clean, np.ones(len(clean), np.int64)),
        "random30": H.Selection(rnd, np.ones(len(rnd), np.int64)),
    }


def evaluate_all(world, selections, seeds, log=print) -> dict[str, dict[str, np.ndarray]]:
    tail = np.isin(world.eval_shapes, [P.SHAPES.index(s) for s in P.TAIL_SHAPES])
    results = {}
    for name, sel in selections.items():
        t = time.time()
        if sel.draws == 0:
            log(f"{name}: empty selection, skipped")
            continue
        r = H.train_students(world, sel, seeds)
        r["shape_tail"] = r["shape"][:, tail]
        results[name] = r
        avg = np.mean([r[m].mean() for m in METRICS])
        log(f"{name:<28} unique={len(sel.idx):<6} draws={sel.draws:<6} avg={avg:.4f} "
            f"({time.time() - t:.0f}s)")  # fmt: skip
    return results


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", type=int, default=24_000)
    ap.add_argument("--samples-seen", type=int, default=None, help="default: 3 x pool")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--flyt-max-steps", type=int, default=4000)
    ap.add_argument("--flyt-patience", type=int, default=10)
    ap.add_argument("--flyt-eval-every", type=int, default=50)
    ap.add_argument("--flyt-lr", type=float, default=1e-3)
    ap.add_argument("--tiny", action="store_true", help="smoke-test sizes")
    ap.add_argument("--out", default="docs/benchmarks_curate.md")
    ap.add_argument("--json", default=None, help="also write the raw numbers here")
    ap.add_argument(
        "--save", default=None, help="save score columns + selections (.npz) for diagnose.py"
    )
    return ap


def world_sizes(args: argparse.Namespace) -> H.Sizes:
    """The sizes `parser()`'s options ask for (--tiny, --pool, --samples-seen)."""
    sizes = H.Sizes.tiny() if args.tiny else H.Sizes(pool=args.pool)
    if not args.tiny:
        sizes.samples_seen = args.samples_seen or 3 * args.pool
    return sizes


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.time()
    sizes = world_sizes(args)
    world = H.build_world(sizes)
    print(f"world: {world.seconds}", flush=True)

    from laion_spark.config import load_config
    from laion_spark.session import get_spark
    from laion_spark.tables import Tables

    work = Path(tempfile.mkdtemp(prefix="minidatacomp_"))
    hcs_cap = max(1, round(sizes.samples_seen / (0.3 * sizes.pool)))
    cfg = load_config(
        "local",
        [
            f"workdir={work}",
            "curate.image_clusters=64",
            *flyt_overrides(args),
        ],
        extra={"curate.definitions": definitions(sizes.samples_seen, hcs_cap)},
    )
    spark = get_spark(cfg)
    tables = Tables(spark, cfg)
    t1 = time.time()
    inputs = write_inputs(spark, cfg, tables, world, work)
    ids = inputs["ids"]
    t2 = time.time()
    print(inputs["score_stage"].line(), flush=True)
    grid = [grid_name(t, a) for t in SCS_TEMPS for a in SCS_ALPHAS]
    res = curate(spark, cfg, tables, world, FILTER_ORDER + grid)
    t3 = time.time()
    print(res.line(), flush=True)
    failed = [k for k in res.by_status if k.startswith("failed")]
    if failed:
        print(f"FAILED filters: {failed}: {res.notes}", file=sys.stderr)
    subset_names = [n for _, n in METHODS] + grid
    subset_names = [n for n in subset_names if n in res.by_status]
    selections = read_selections(tables, ids, subset_names)
    scores = read_scores(tables, ids)
    spark.stop()
    shutil.rmtree(work, ignore_errors=True)
    selections.update(diagnostic_selections(world))

    seeds = list(range(args.seeds))
    t4 = time.time()
    results = evaluate_all(world, selections, seeds)
    t5 = time.time()
    timing = {
        "world": round(t1 - t0),
        "tables_and_score_stage": round(t2 - t1),
        "curate_stage": round(t3 - t2),
        "students": round(t5 - t4),
        "students_n": len(results) * len(seeds),
        "total": round(t5 - t0),
    }
    report = analyse(world, selections, results, scores, res, timing, args, sizes)
    if args.out:
        Path(args.out).write_text(report["markdown"])
    if args.json:
        Path(args.json).write_text(json.dumps(report["json"], indent=1, default=float))
    if args.save:
        save(args.save, ids, scores, selections, res.notes)
    print(report["result_line"])


def analyse(world, selections, results, scores, res, timing, args, sizes) -> dict:
    """Bootstrap the table, the paired differences and the diagnostics; render markdown."""
    from benchmarks.minidatacomp.report import render

    metrics_all = METRICS + ["shape_tail"]
    n_items = {m: next(iter(results.values()))[m].shape[1] for m in metrics_all}
    boot = ST.Bootstrap(len(next(iter(results.values()))["color"]), n_items)
    table, _ = ST.summary(results, METRICS, boot)
    for name, r in results.items():
        rr = boot.replicates(r["shape_tail"], "shape_tail")
        table[name]["shape_tail"] = (float(r["shape_tail"].mean()), *ST.ci(rr))
    pairs = [
        ("mflyt_scs", "clip_top30"),
        ("clip_top30", "no_filter"),
        ("mflyt_scs", "no_filter"),
        ("flyt_scs", "clip_top30"),
        ("flyt_top30", "clip_top30"),
        ("mflyt_top30", "clip_top30"),
        ("mflyt_hcs", "clip_top30"),
        ("mflyt_scs", "mflyt_top30"),
        ("image_based_and_clip30", "clip_top30"),
        ("image_based_and_clip30", "no_filter"),
        ("basic", "no_filter"),
        ("oracle_clean", "no_filter"),
        ("random30", "no_filter"),
    ]
    diffs = {
        (a, b): ST.paired(results, a, b, metrics_all, boot)
        for a, b in pairs
        if a in results and b in results
    }
    desc = {n: H.describe(world, s) for n, s in selections.items()}
    return render(
        world=world,
        table=table,
        diffs=diffs,
        desc=desc,
        results=results,
        scores=scores,
        stage=res,
        timing=timing,
        args=args,
        sizes=sizes,
    )


if __name__ == "__main__":
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    main()

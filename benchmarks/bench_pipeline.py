"""End to end: laion_spark's pipeline vs the composed peer stack, same crawl, same cores.

    .venv/bin/python benchmarks/bench_pipeline.py --pairs 20000 --repeat 3
    .venv/bin/python benchmarks/bench_pipeline.py --pairs 2000 --repeat 3   # fixed costs

Data: a generated crawl (laion_spark.demo.crawl, real gzipped WAT files) of pages whose
<img> tags point at --pairs distinct URLs on one loopback image server
(`_common.start_image_server`, its own process, 127.0.0.1 only: 500 distinct 512x512
JPEGs cycled over the URLs), plus the junk every page of that writer carries (data: URI,
svg, gif, too-short alt, no alt) and 30 <a> links per page. Both stacks read the same WAT
files and fetch from the same server, each pinned to the same --cores (taskset), one
after the other (order alternates between runs).

Ours, one process (`--ours-worker`): a local[cores] Spark session with Delta, then
`laion_spark.pipeline.run_pipeline` over extract -> download -> embed -> index ->
merge_index into Delta tables under a fresh workdir. Timed from process launch to exit:
interpreter, JVM start, every Delta commit and the shutdown are in it.

Peers, each a process in its own venv (benchmarks/.venvs/<tool>, see _common), each timed
launch to exit, summed:
  1. cc2dataset 1.5.0: its per-file function `process_wat(path, "image")` mapped over the
     WAT files by a pool of --cores processes, rows deduplicated by its uid (what its Spark
     driver does: dropDuplicates(["uid"])), one parquet of uid/url/alt/page_url. Its own
     driver cannot read local files (it prefixes every path with s3://commoncrawl/ or
     https://data.commoncrawl.org/), and this lean driver is cheaper than its Spark one;
  2. img2dataset: that parquet -> webdataset shards (one per core), our download
     settings (_common.img2dataset_cmd: 256 px, border, jpg 95, no retries);
  3. clip-retrieval `inference` (clip_inference.main) on those shards, images and
     captions, the same open_clip model and checkpoint as ours (tiny-clip by default);
  4. autofaiss `build_index` on its image embeddings, the same memory budget as ours.

Extract rules: `--rules cc2dataset` (default) runs ours with cc2dataset's rules so both
stacks carry the same pairs through every stage; `--rules laion` uses ours' defaults
(LAION-5B rules + language id), which drop the svg/gif/"ok" junk pairs cc2dataset keeps.
After every run the outputs are compared (pairs extracted, images downloaded, embeddings,
index ntotal) with delta-rs, pyarrow and faiss, and printed.

Ends with one line `result: ratio=... ours_s=... peers_s=... pairs=...` plus per-stage
seconds (medians of --repeat runs, with min-max ranges). `ratio` is the project's ours ÷
peer for throughput: pairs/s ours ÷ pairs/s peers on the same pairs, which equals
`speedup` = peers_s / ours_s (both printed; > 1 means ours is faster).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    AUTOFAISS_SCRIPT,
    CC2DATASET_RULES,
    CC2DATASET_VENV,
    clip_model_arg,
    ensure_autofaiss,
    ensure_cc2dataset,
    ensure_clip_retrieval,
    ensure_img2dataset,
    img2dataset_cmd,
    img2dataset_successes,
    our_download_overrides,
    peer_env,
    print_result,
    project_python,
    run_clip_inference,
    start_image_server,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGES = ("extract", "download", "embed", "index")
# our pipeline's stage names -> the four shared stage names (merge_index is part of index:
# autofaiss's output is one servable index, ours is that after the merge)
OUR_STAGES = {
    "extract": "extract",
    "download": "download",
    "embed": "embed",
    "index": "index",
    "merge_index": "index",
}
STEP_TIMEOUT_S = 3600


# ---------------------------------------------------------------- the crawl
def make_crawl(
    work: Path, base: str, pairs: int, files: int, per_page: int, links: int
) -> list[str]:
    """WAT files whose pages carry `pairs` distinct (image URL, caption) pairs on `base`."""
    import random

    from laion_spark.demo.crawl import write_synthetic_crawl
    from laion_spark.demo.synthetic import make_samples

    rnd = random.Random(5)
    words = "news story photo gallery travel city river garden market people".split()
    samples = make_samples(pairs, seed=11)
    n_pages = math.ceil(pairs / per_page)
    pages = []
    for p in range(n_pages):
        chunk = samples[p * per_page : (p + 1) * per_page]
        pages.append(
            {
                "url": f"{base}/site/{p % 50}/page-{p}.html",
                "images": [(f"{base}/img/{s.index}.jpg", s.caption) for s in chunk],
                "links": [
                    (f"{base}/article/{p}/{j}", " ".join(rnd.choice(words) for _ in range(4)))
                    for j in range(links)
                ],
                "license": "https://creativecommons.org/licenses/by/4.0/" if p % 5 == 0 else None,
            }
        )
    wats = []
    per_file = math.ceil(len(pages) / files)
    for f in range(files):
        part = pages[f * per_file : (f + 1) * per_file]
        if part:
            paths = write_synthetic_crawl(str(work / f"crawl-{f}"), part, f"CC-MAIN-BENCH-{f:03d}")
            wats.append(paths["wat"])
    return wats


# ---------------------------------------------------------------- ours (one process)
def ours_worker(spec: dict) -> None:
    """Child process: Spark session + run_pipeline; prints one `OURS {json}` line."""
    t_launch = spec["t_launch"]
    from laion_spark.config import load_config
    from laion_spark.pipeline import run_pipeline
    from laion_spark.session import get_spark
    from laion_spark.tables import Tables

    cores, work = spec["cores"], spec["workdir"]
    overrides = [
        f"workdir={work}",
        f"spark.master=local[{cores}]",
        *our_download_overrides(spec["threads"], partitions=cores),
        f"embed.model={spec['model']}",
        "embed.device=cpu",
        f"embed.batch_size={spec['batch']}",
        f"index.memory_budget_mb={spec['budget_mb']}",
        f"index.partitions={cores}",
        f"index.local_cache={work}/index-cache",
    ]
    if spec["pretrained"]:
        overrides.append(f"embed.pretrained={spec['pretrained']}")
    extra: dict = {
        "spark.conf": {
            "spark.sql.shuffle.partitions": "4",
            "spark.default.parallelism": str(cores),
        }
    }
    if spec["rules"] == "cc2dataset":
        extra.update({f"extract.{k}": v for k, v in CC2DATASET_RULES.items()})
    cfg = load_config("local", overrides, extra)
    spark = get_spark(cfg)
    tables = Tables(spark, cfg)
    t_ready = time.time()
    results = run_pipeline(
        spark,
        cfg,
        tables,
        stages=["extract", "download", "embed", "index", "merge_index"],
        extract={"inputs": spec["wats"]},
    )
    t_done = time.time()
    stages = {s: 0.0 for s in STAGES}
    for r, name in zip(
        results, ["extract", "download", "embed", "index", "merge_index"], strict=True
    ):
        stages[OUR_STAGES[name]] += r.seconds
    merged = results[-1]
    out = {
        "startup_s": t_ready - t_launch,
        "pipeline_s": t_done - t_ready,
        "stages": stages,
        "by_status": {r.stage: r.by_status for r in results},
        "index_path": merged.notes.get("path"),
        "factory": merged.notes.get("factory"),
        "tables": tables.root,
    }
    print("OURS " + json.dumps(out, default=str), flush=True)


def run_ours(spec: dict, run_dir: Path, taskset: list[str]) -> dict:
    log = run_dir / "ours.log"
    spec = dict(spec, workdir=str(run_dir / "ours"), t_launch=time.time())
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.time()
    with open(log, "w") as f:
        p = subprocess.run(
            [*taskset, project_python(), __file__, "--ours-worker", json.dumps(spec)],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=run_dir,
            timeout=STEP_TIMEOUT_S,
        )
    wall = time.time() - t0
    text = log.read_text()
    lines = [x for x in text.splitlines() if x.startswith("OURS ")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"our pipeline failed (rc {p.returncode}), log {log}:\n{text[-3000:]}")
    out = json.loads(lines[-1][5:])
    out["total_s"] = wall
    out["other_s"] = wall - out["startup_s"] - sum(out["stages"].values())
    return out


# ---------------------------------------------------------------- peers (four processes)
PEER_EXTRACT = r"""
import json, sys
from multiprocessing import Pool
from loguru import logger
logger.remove()
import pyarrow as pa, pyarrow.parquet as pq
from cc2dataset.main import process_wat

def one(path):
    return list(process_wat(path, "image"))

if __name__ == "__main__":
    out, cores, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    seen, rows = set(), []
    with Pool(cores) as pool:
        for part in pool.imap(one, paths):
            for uid, url, alt, _fn, page in part:
                if uid not in seen:  # its driver: df.dropDuplicates(["uid"])
                    seen.add(uid)
                    rows.append((uid, url, alt, page))
    cols = list(zip(*rows)) if rows else [[], [], [], []]
    names = ["uid", "url", "alt", "page_url"]
    pq.write_table(pa.table({k: pa.array(v, pa.string()) for k, v in zip(names, cols)}), out)
    print(json.dumps({"pairs": len(rows)}))
"""


def _timed(cmd: list[str], log: Path, what: str, **kw) -> float:
    t0 = time.time()
    with open(log, "w") as f:
        p = subprocess.run(
            cmd, stdout=f, stderr=subprocess.STDOUT, timeout=STEP_TIMEOUT_S, env=peer_env(), **kw
        )
    wall = time.time() - t0
    if p.returncode != 0:
        raise RuntimeError(
            f"{what} failed (rc {p.returncode}), log {log}:\n{log.read_text()[-3000:]}"
        )
    return wall


def run_peers(spec: dict, run_dir: Path, taskset: list[str], base: str, peer: dict) -> dict:
    import pyarrow.parquet as pq

    work = run_dir / "peers"
    work.mkdir()
    cores, stages = spec["cores"], {}
    # 1. cc2dataset: WAT -> parquet of url/alt
    pairs_pq = work / "cc2dataset.parquet"
    stages["extract"] = _timed(
        [
            *taskset,
            str(CC2DATASET_VENV / "bin" / "python"),
            "-c",
            PEER_EXTRACT,
            str(pairs_pq),
            str(cores),
            *spec["wats"],
        ],
        work / "cc2dataset.log",
        "cc2dataset",
    )
    urls = pq.read_table(pairs_pq, columns=["url"]).column("url").to_pylist()
    # peers only ever fetch from the loopback server
    bad = [u for u in urls if not u.startswith(base + "/")]
    if bad:
        raise RuntimeError(f"cc2dataset produced non-loopback URLs, not fetched: {bad[:5]}")
    # 2. img2dataset: parquet -> webdataset, one shard per core
    shards = work / "shards"
    per_shard = max(1, math.ceil(len(urls) / cores))
    stages["download"] = _timed(
        [
            *taskset,
            *img2dataset_cmd(
                peer["img2dataset"],
                str(pairs_pq),
                str(shards),
                cores=cores,
                threads=spec["threads"],
                per_shard=per_shard,
                input_format="parquet",
                output_format="webdataset",
                url_col="url",
                caption_col="alt",
            ),
        ],
        work / "img2dataset.log",
        "img2dataset",
    )
    tars = sorted(shards.glob("*.tar"))
    n_tars = len(tars)
    # 3. clip-retrieval inference on the shards (images + captions)
    emb = work / "embeddings"
    t = run_clip_inference(
        peer["clip_py"],
        str(shards / f"{{00000..{n_tars - 1:05d}}}.tar"),
        emb,
        clip_model=peer["clip_model"],
        arch_json=peer["arch_json"],
        batch=spec["batch"],
        workers=min(cores, n_tars),
        cwd=work,
        cmd_prefix=taskset,
    )
    stages["embed"] = t["wall_s"]
    # 4. autofaiss on the image embeddings
    idx = work / "autofaiss"
    idx.mkdir()
    stages["index"] = _timed(
        [
            *taskset,
            str(peer["autofaiss_py"]),
            "-c",
            AUTOFAISS_SCRIPT,
            str(emb / "img_emb"),
            str(idx),
            f"{spec['budget_mb']}MB",
            "",
            str(cores),
        ],
        work / "autofaiss.log",
        "autofaiss",
    )
    return {
        "stages": stages,
        "total_s": sum(stages.values()),
        "clip_inner_s": t["inner_s"],
        "pairs_parquet": str(pairs_pq),
        "shards": str(shards),
        "embeddings": str(emb),
        "index": str(idx / "knn.index"),
        "n_shards": n_tars,
    }


# ---------------------------------------------------------------- do the outputs agree?
def check_outputs(ours: dict, peers: dict, compare_embeddings: bool, equal_rules: bool) -> dict:
    """Both stacks' outputs side by side, read with the consumers' tools (delta-rs, pyarrow,
    faiss): pairs extracted, images downloaded, embeddings, index ntotal."""
    import faiss
    import numpy as np
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq
    from deltalake import DeltaTable

    def delta(name: str, cols: list[str]):
        return DeltaTable(f"{ours['tables']}/{name}").to_pyarrow_dataset().to_table(columns=cols)

    c = delta("candidates", ["url", "text"])
    ours_pairs = set(zip(c.column("url").to_pylist(), c.column("text").to_pylist(), strict=True))
    p = pq.read_table(peers["pairs_parquet"], columns=["url", "alt"])
    peer_pairs = set(zip(p.column("url").to_pylist(), p.column("alt").to_pylist(), strict=True))

    im = delta("images", ["url", "status"])
    ours_ok = {
        u
        for u, s in zip(im.column("url").to_pylist(), im.column("status").to_pylist(), strict=True)
        if s == "success"
    }
    meta = ds.dataset(
        [str(x) for x in sorted(Path(peers["shards"]).glob("*.parquet"))], format="parquet"
    ).to_table(columns=["url", "status"])
    peer_ok = {
        u
        for u, s in zip(
            meta.column("url").to_pylist(), meta.column("status").to_pylist(), strict=True
        )
        if s == "success"
    }
    e = delta("embeddings", ["image_embedding", "status"])
    ours_vecs = [v for v in e.column("image_embedding").to_pylist() if v is not None]
    peer_vecs = np.concatenate(
        [np.load(f) for f in sorted((Path(peers["embeddings"]) / "img_emb").glob("*.npy"))]
    )
    ours_index = faiss.read_index(ours["index_path"], faiss.IO_FLAG_ONDISK_SAME_DIR)
    peer_index = faiss.read_index(peers["index"], faiss.IO_FLAG_MMAP)
    out = {
        "pairs_ours": len(ours_pairs),
        "pairs_peers": len(peer_pairs),
        "pairs_only_ours": len(ours_pairs - peer_pairs),
        "pairs_only_peers": len(peer_pairs - ours_pairs),
        "images_ours": len(ours_ok),
        "images_peers": len(peer_ok),
        "images_peers_stats": img2dataset_successes(Path(peers["shards"])),
        "images_only_ours": len(ours_ok - peer_ok),
        "images_only_peers": len(peer_ok - ours_ok),
        "embeddings_ours": len(ours_vecs),
        "embeddings_peers": int(len(peer_vecs)),
        "ntotal_ours": int(ours_index.ntotal),
        "ntotal_peers": int(peer_index.ntotal),
    }
    if compare_embeddings and ours_vecs and len(peer_vecs):
        # same model, same source images, each tool's own resize: each peer vector's best
        # match among ours (row order differs between the tools)
        a = np.asarray(ours_vecs, dtype="float32")
        b = peer_vecs.astype("float32")
        out["embedding_mean_best_cosine"] = round(float(np.mean(np.max(b @ a.T, axis=1))), 4)
    images = out["images_ours"]
    out["agree_pairs"] = int(
        out["pairs_ours"] == out["pairs_peers"]
        and out["pairs_only_ours"] == out["pairs_only_peers"] == 0
    )
    out["agree_images"] = int(
        images == out["images_peers"] == out["images_peers_stats"]
        and out["images_only_ours"] == out["images_only_peers"] == 0
    )
    out["agree_index"] = int(
        out["embeddings_ours"] == out["embeddings_peers"] == images
        and out["ntotal_ours"] == out["ntotal_peers"] == images
    )
    # with LAION rules ours drops pairs cc2dataset keeps by design: only what follows counts
    out["agree"] = int(
        (out["agree_pairs"] or not equal_rules) and out["agree_images"] and out["agree_index"]
    )
    return out


# ---------------------------------------------------------------- report
def med(xs: list[float]) -> float:
    return statistics.median(xs)


def rng(xs: list[float]) -> str:
    return f"{min(xs):.1f}-{max(xs):.1f}"


def report(runs: list[dict], pairs: int) -> dict:
    ours_t = [r["ours"]["total_s"] for r in runs]
    peer_t = [r["peers"]["total_s"] for r in runs]
    speed = [p / o for o, p in zip(ours_t, peer_t, strict=True)]
    o_med, p_med = med(ours_t), med(peer_t)
    print(f"\n=== {len(runs)} run(s), {pairs} pairs: medians (min-max) ===")
    print(f"{'stage':<10} {'ours s':>8} {'share':>6}   {'peers s':>8} {'share':>6}   peer tool")
    tools = {
        "extract": "cc2dataset",
        "download": "img2dataset",
        "embed": "clip-retrieval inference",
        "index": "autofaiss",
    }
    rows = [
        ("startup", [r["ours"]["startup_s"] for r in runs], None, "(ours: interpreter+JVM+session)")
    ]
    rows += [
        (
            s,
            [r["ours"]["stages"][s] for r in runs],
            [r["peers"]["stages"][s] for r in runs],
            tools[s],
        )
        for s in STAGES
    ]
    rows.append(("other", [r["ours"]["other_s"] for r in runs], None, "(ours: summary, shutdown)"))
    for name, o, p, tool in rows:
        ps = f"{med(p):8.1f} {med(p) / p_med:6.1%}" if p else f"{'-':>8} {'':>6}"
        print(f"{name:<10} {med(o):8.1f} {med(o) / o_med:6.1%}   {ps}   {tool}")
    print(f"{'total':<10} {o_med:8.1f} {'':>6}   {p_med:8.1f}")
    print(
        f"ours {rng(ours_t)} s, peers {rng(peer_t)} s; speedup per run "
        + ", ".join(f"{s:.2f}" for s in speed)
    )
    fields = {
        "ratio": f"{med(speed):.2f}",
        "speedup": f"{med(speed):.2f}",
        "ours_s": f"{o_med:.1f}",
        "peers_s": f"{p_med:.1f}",
        "pairs": pairs,
        "runs": len(runs),
        "ratio_range": f"{min(speed):.2f}-{max(speed):.2f}",
        "ours_s_range": rng(ours_t),
        "peers_s_range": rng(peer_t),
        "ours_startup_s": f"{med([r['ours']['startup_s'] for r in runs]):.1f}",
    }
    for s in STAGES:
        fields[f"ours_{s}_s"] = f"{med([r['ours']['stages'][s] for r in runs]):.1f}"
    for s in STAGES:
        fields[f"peers_{s}_s"] = f"{med([r['peers']['stages'][s] for r in runs]):.1f}"
    fields["agree"] = min(r["check"]["agree"] for r in runs)
    return fields


def crossover(small: dict, large: dict) -> dict:
    """Straight line t = fixed + per_pair * n through each stack's medians at two sizes, and
    the pair count where the two lines cross (ours faster above it)."""
    n1, n2 = small["pairs"], large["pairs"]
    out = {}
    for who in ("ours", "peers"):
        t1, t2 = float(small[f"{who}_s"]), float(large[f"{who}_s"])
        per = (t2 - t1) / (n2 - n1)
        out[who] = (t1 - per * n1, per)
    (fo, po), (fp, pp) = out["ours"], out["peers"]
    print(
        f"fixed + per-pair fit from {n1} and {n2} pairs: ours {fo:.1f} s + {po * 1000:.2f} ms/pair, "
        f"peers {fp:.1f} s + {pp * 1000:.2f} ms/pair"
    )
    if po <= 0 or pp <= 0:
        cross = "unknown"  # a stack got faster with more pairs: timings too noisy to fit
        print(
            "crossover: unknown (a per-pair cost came out <= 0: noisy timings or sizes too close)"
        )
    elif po >= pp:
        # ours costs as much or more per pair: ahead everywhere, or never catches up
        cross = "0" if fo <= fp else "none"
        print(
            f"crossover: {'ours is ahead at every size' if cross == '0' else 'ours never catches up'}"
        )
    else:
        cross = str(max(0, round((fo - fp) / (pp - po))))
        print(f"crossover: ours is faster above {cross} pairs")
    return {
        "crossover_pairs": cross,
        "ours_fixed_s": f"{fo:.1f}",
        "ours_ms_per_pair": f"{po * 1000:.2f}",
        "peers_fixed_s": f"{fp:.1f}",
        "peers_ms_per_pair": f"{pp * 1000:.2f}",
    }


# ---------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--pairs",
        default="20000",
        help="distinct image pairs in the crawl; a comma list (2000,20000) runs each size and "
        "fits the crossover",
    )
    ap.add_argument("--repeat", type=int, default=1, help="runs of each stack (median reported)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--threads", type=int, default=32, help="download threads per process/task")
    ap.add_argument("--wat-files", type=int, default=0, help="0 = max(cores, pairs / 2500)")
    ap.add_argument("--per-page", type=int, default=10, help="images per page")
    ap.add_argument("--links", type=int, default=30, help="<a> links per page")
    ap.add_argument("--image-size", type=int, default=512, help="side of the served JPEGs")
    ap.add_argument("--rules", choices=("cc2dataset", "laion"), default="cc2dataset")
    ap.add_argument("--model", default="tiny-clip")
    ap.add_argument("--pretrained", default=None, help="checkpoint (default: tiny-clip cache)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--budget-mb", type=int, default=512, help="index memory budget, both")
    ap.add_argument("--work", default=None, help="work folder (default: a new temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep every run's outputs")
    ap.add_argument("--ours-worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.ours_worker:
        return ours_worker(json.loads(a.ours_worker))

    from laion_spark.models import tiny_clip as tiny

    work = Path(a.work or tempfile.mkdtemp(prefix="bench_pipeline_"))
    work.mkdir(parents=True, exist_ok=True)
    cores = a.cores
    ncpu = os.cpu_count() or 1
    taskset = (
        ["taskset", "-c", f"0-{cores - 1}"] if shutil.which("taskset") and cores <= ncpu else []
    )

    # the four peer venvs and the model: installed / trained once, never timed
    errors = []
    if err := ensure_cc2dataset():
        errors.append("cc2dataset: " + err)
    i2d = ensure_img2dataset()
    if not i2d:
        errors.append("img2dataset could not be installed")
    clip_py = ensure_clip_retrieval()
    autofaiss_py = ensure_autofaiss()
    if errors:
        print("\n".join(errors))
        print(f"result: ratio=nan ours_s=nan peers_s=nan pairs={a.pairs}")
        return
    ckpt = a.pretrained or tiny.ensure_tiny_clip()
    clip_model, arch_json = clip_model_arg(a.model, ckpt, work)
    peer = {
        "img2dataset": i2d,
        "clip_py": clip_py,
        "autofaiss_py": autofaiss_py,
        "clip_model": clip_model,
        "arch_json": arch_json,
    }

    sizes = sorted(int(x) for x in str(a.pairs).split(","))
    server, base = start_image_server(max(sizes), a.image_size)
    try:
        by_size = [run_size(a, n, work, base, taskset, peer) for n in sizes]
    finally:
        server.kill()
        if not a.keep and not a.work:
            shutil.rmtree(work, ignore_errors=True)
    final = by_size[-1]
    for fields in by_size[:-1]:
        print(f"size {fields['pairs']}: " + " ".join(f"{k}={v}" for k, v in fields.items()))
    if len(by_size) > 1:
        final = {**final, **crossover(by_size[0], by_size[-1])}
    print_result(final)


def run_size(a, pairs: int, work: Path, base: str, taskset: list[str], peer: dict) -> dict:
    """--repeat runs of both stacks on a crawl of `pairs` pairs; the report's fields."""
    cores = a.cores
    work = work / f"pairs-{pairs}"
    files = a.wat_files or max(cores, round(pairs / 2500))
    t = time.time()
    wats = make_crawl(work, base, pairs, files, a.per_page, a.links)
    mb = sum(os.path.getsize(w) for w in wats) / 1e6
    print(
        f"\ncrawl: {len(wats)} WAT files, {mb:.1f} MB, {pairs} image pairs on {base} "
        f"(+ junk), written in {time.time() - t:.1f}s; cores {cores}, rules {a.rules}, "
        f"model {a.model}",
        flush=True,
    )
    spec = {
        "wats": wats,
        "cores": cores,
        "threads": a.threads,
        "model": a.model,
        "pretrained": a.pretrained,
        "batch": a.batch,
        "budget_mb": a.budget_mb,
        "rules": a.rules,
    }
    runs = []
    for i in range(a.repeat):
        run_dir = work / f"run-{i}"
        run_dir.mkdir()
        # alternate which stack goes first, so a drift in machine load hits both alike
        order = ("ours", "peers") if i % 2 == 0 else ("peers", "ours")
        res: dict = {}
        for who in order:
            if who == "ours":
                res["ours"] = run_ours(spec, run_dir, taskset)
            else:
                res["peers"] = run_peers(spec, run_dir, taskset, base, peer)
            stages = {k: round(v, 1) for k, v in res[who]["stages"].items()}
            print(f"run {i + 1} {who}: {res[who]['total_s']:.1f}s {json.dumps(stages)}", flush=True)
        res["check"] = check_outputs(
            res["ours"], res["peers"], pairs <= 5000, a.rules == "cc2dataset"
        )
        print(f"run {i + 1} check: {json.dumps(res['check'])}", flush=True)
        runs.append(res)
        if not a.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    print(
        f"our index: {runs[-1]['ours']['factory']}; our stage statuses: "
        f"{json.dumps(runs[-1]['ours']['by_status'])}"
    )
    return report(runs, pairs)


if __name__ == "__main__":
    main()

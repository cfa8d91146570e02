"""Index benchmark: laion_spark index stage vs autofaiss on the same vectors and memory budget.

    .venv/bin/python benchmarks/bench_index.py [--n 1000000] [--dim 512] [--budget-mb 256]

Both build from the same N x D clustered float32 vectors (L2-normalised, inner product),
under the same index memory budget. Reported for each: build time, peak RSS of the whole
process tree (Spark's JVM and Python workers included for ours), recall@10 against exact
search on 1000 held-out queries, and single-query latency p50/p99 (1 thread). autofaiss is
installed from PyPI into benchmarks/.venvs/autofaiss (created here), never into .venv.
Ends with one line: `result: ...` (ratio_* = ours / autofaiss, higher is better).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _common import AUTOFAISS_SCRIPT, ensure_autofaiss, print_result

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def clustered(n: int, d: int, seed: int, clusters: int = 1000, spread: float = 0.6) -> np.ndarray:
    """Gaussian clusters around random centres (CLIP embeddings are clustered, not uniform)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)).astype("float32")
    out = np.empty((n, d), dtype="float32")
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        x = centres[rng.integers(0, clusters, m)] + spread * rng.normal(size=(m, d)).astype(
            "float32"
        )
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def tree_rss(pid: int) -> int:
    """Sum of RSS bytes of pid and all its descendants (from /proc)."""
    kids: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            kids.setdefault(int(parts[1]), []).append(int(p))
            rss[int(p)] = int(parts[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        q = todo.pop()
        total += rss.get(q, 0)
        todo.extend(kids.get(q, []))
    return total


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[float, int, str]:
    """(seconds, peak tree RSS bytes, stdout) of a subprocess."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=sys.stderr, text=True, env=env)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    done.set()
    th.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed with {proc.returncode}")
    return time.time() - t0, peak, out


def bench_sample_id(i: int) -> str:
    """The bench's sample_id of row i: sha256 hex, like real sample_ids."""
    return hashlib.sha256(str(i).encode()).hexdigest()[:32]


def row_of_faiss_id(n: int):
    """Maps our faiss ids (63 bits of the sample_id) back to row numbers, the truth's ids."""
    from laion_spark.ids import sample_id_int64

    fid = np.array([sample_id_int64(bench_sample_id(i)) for i in range(n)], dtype="int64")
    order = np.argsort(fid)
    fid_sorted = fid[order]

    def to_rows(found: np.ndarray) -> np.ndarray:
        pos = np.clip(np.searchsorted(fid_sorted, found), 0, n - 1)
        return np.where(fid_sorted[pos] == found, order[pos], -1)

    return to_rows


def evaluate(index, queries: np.ndarray, truth: np.ndarray, to_rows=None) -> dict:
    import faiss

    faiss.omp_set_num_threads(1)
    _, found = index.search(queries, 10)
    if to_rows is not None:
        found = to_rows(found)
    hits = sum(len(set(f) & set(t)) for f, t in zip(found, truth, strict=True))
    lat = []
    for q in queries[:500]:
        t = time.perf_counter()
        index.search(q[None, :], 10)
        lat.append((time.perf_counter() - t) * 1000)
    return {
        "recall": hits / truth.size,
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
    }


# ---------------------------------------------------------------- autofaiss (separate venv)
def bench_autofaiss(work: Path, budget_mb: int, key: str = "") -> dict:
    import faiss

    py = ensure_autofaiss()
    out = work / "autofaiss"
    out.mkdir(exist_ok=True)
    secs, peak, _ = run_measured(
        [str(py), "-c", AUTOFAISS_SCRIPT, str(work / "emb"), str(out), f"{budget_mb}MB", key, "2"]
    )
    infos = json.loads((out / "infos.json").read_text())
    index = faiss.read_index(str(out / "knn.index"), faiss.IO_FLAG_MMAP)
    if infos.get("index_param"):
        faiss.ParameterSpace().set_index_parameters(index, infos["index_param"])
    return {
        "seconds": secs,
        "peak": peak,
        "index": index,
        "factory": infos.get("index_key"),
        "params": infos.get("index_param"),
        "size": (out / "knn.index").stat().st_size,
    }


# ---------------------------------------------------------------- ours (Spark + Delta)
def ours_worker(work: str, budget_mb: int, partitions: int) -> None:
    """Child process: index the Delta embeddings table and merge; prints the manifest row."""
    sys.path.insert(0, str(ROOT))
    from laion_spark.config import load_config
    from laion_spark.index.merge import merge_index
    from laion_spark.index.stage import run
    from laion_spark.session import get_spark
    from laion_spark.tables import Tables

    cfg = load_config(
        "local",
        [
            f"workdir={work}/ours",
            f"index.memory_budget_mb={budget_mb}",
            f"index.partitions={partitions}",
            "index.heldout_queries=200",
        ],
    )
    spark = get_spark(cfg)
    tables = Tables(spark, cfg)
    r1 = run(spark, cfg, tables)
    r2 = merge_index(spark, cfg, tables)
    print(
        "OURS " + json.dumps({"stage": r1.notes, "merge": {k: str(v) for k, v in r2.notes.items()}})
    )


def write_delta(work: Path, x: np.ndarray) -> None:
    import pyarrow as pa
    from deltalake import write_deltalake

    from laion_spark.tables import SPECS  # noqa: F401 (schema reference for the columns below)

    n, d = x.shape
    path = work / "ours" / "tables" / "embeddings"
    for s in range(0, n, 200_000):
        m = min(200_000, n - s)
        flat = pa.array(x[s : s + m].reshape(-1), type=pa.float32())
        vec = pa.ListArray.from_arrays(pa.array(np.arange(0, (m + 1) * d, d, dtype="int32")), flat)
        tbl = pa.table(
            {
                # real sample_ids are sha256 hex: the faiss id is their first 63 bits
                "sample_id": pa.array([bench_sample_id(i) for i in range(s, s + m)]),
                "model_id": pa.array(["bench"] * m),
                "image_embedding": vec,
                "text_embedding": pa.nulls(m, pa.list_(pa.float32())),
                "similarity": pa.nulls(m, pa.float32()),
                "status": pa.array(["ok"] * m),
            }
        )
        write_deltalake(str(path), tbl, mode="append")


def bench_ours(work: Path, budget_mb: int, partitions: int, n_rows: int) -> dict:
    import faiss

    secs, peak, out = run_measured(
        [
            sys.executable,
            __file__,
            "--ours-worker",
            str(work),
            "--budget-mb",
            str(budget_mb),
            "--partitions",
            str(partitions),
        ]
    )
    notes = json.loads([line for line in out.splitlines() if line.startswith("OURS ")][-1][5:])
    path = notes["merge"]["path"]
    index = faiss.read_index(path, faiss.IO_FLAG_ONDISK_SAME_DIR)
    params = {k: int(notes["merge"][k]) for k in ("nprobe", "efSearch") if k in notes["merge"]}
    from laion_spark.index.build import search_params

    search_params(index, params)
    size = sum(p.stat().st_size for p in Path(path).parent.glob(Path(path).stem + ".*"))
    return {
        "seconds": secs,
        "peak": peak,
        "index": index,
        "factory": notes["stage"]["factory"],
        "params": params,
        "to_rows": row_of_faiss_id(n_rows),
        "size": size,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--budget-mb", type=int, default=256)
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument(
        "--work", default=os.path.join(tempfile.gettempdir(), "laion_spark_bench_index")
    )
    ap.add_argument("--ours-worker", metavar="WORK")
    ap.add_argument(
        "--autofaiss-key",
        default="",
        help="force autofaiss's index_key (e.g. ours' nlist): its own choice at 1M is "
        "IVF16384 trained on every vector, hours of k-means on 2 cores",
    )
    ap.add_argument("--only", choices=("ours", "autofaiss"), help="run one tool only")
    a = ap.parse_args()
    if a.ours_worker:
        return ours_worker(a.ours_worker, a.budget_mb, a.partitions)
    import shutil

    import faiss

    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    (work / "emb").mkdir(parents=True)
    t = time.time()
    x = clustered(a.n, a.dim, seed=1)
    rng = np.random.default_rng(99)
    q = x[rng.choice(a.n, 1000, replace=False)] + 0.3 * rng.normal(size=(1000, a.dim)).astype(
        "float32"
    )
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype("float32")
    for i, s in enumerate(range(0, a.n, 250_000)):
        np.save(work / "emb" / f"part_{i:03d}.npy", x[s : s + 250_000])
    write_delta(work, x)
    exact = faiss.IndexFlatIP(a.dim)
    exact.add(x)
    _, truth = exact.search(q, 10)
    del exact, x
    print(f"data ready: {a.n} x {a.dim} in {time.time() - t:.0f}s", file=sys.stderr)

    res = {}
    for name, fn in (
        ("ours", lambda: bench_ours(work, a.budget_mb, a.partitions, a.n)),
        ("autofaiss", lambda: bench_autofaiss(work, a.budget_mb, a.autofaiss_key)),
    ):
        if a.only and name != a.only:
            continue
        try:
            r = fn()
            r.update(evaluate(r.pop("index"), q, truth, r.pop("to_rows", None)))
            res[name] = r
        except Exception as e:  # report the failing tool instead of faking numbers
            print(f"{name} failed: {type(e).__name__}: {e}", file=sys.stderr)
            res[name] = None
        print(name, json.dumps(res[name], default=str), file=sys.stderr)
    o, p = res.get("ours"), res.get("autofaiss")
    fields = {"n": a.n, "dim": a.dim, "budget_mb": a.budget_mb}
    for name, r in (("ours", o), ("autofaiss", p)):
        if r:
            fields.update(
                {
                    f"{name}_build_s": round(r["seconds"], 1),
                    f"{name}_peak_mb": round(r["peak"] / 2**20),
                    f"{name}_index_mb": round(r["size"] / 2**20, 1),
                    f"{name}_recall10": round(r["recall"], 4),
                    f"{name}_p50_ms": round(r["p50"], 3),
                    f"{name}_p99_ms": round(r["p99"], 3),
                }
            )
    if o and p:
        fields["ratio_recall"] = round(o["recall"] / p["recall"], 3)
        fields["ratio_build_speed"] = round(p["seconds"] / o["seconds"], 3)
    print(
        "factories:",
        o and o["factory"],
        o and o["params"],
        "|",
        p and p["factory"],
        p and p["params"],
        file=sys.stderr,
    )
    print_result(fields)


if __name__ == "__main__":
    main()

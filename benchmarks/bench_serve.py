"""Search service throughput: req/s and latency at 8 concurrent clients, before and after.

    .venv/bin/python benchmarks/bench_serve.py [--n 20000] [--seconds 30] [--clients 8] \\
        --before /path/to/old/checkout [--after .]

One index (--n random unit vectors of tiny-clip's width, Flat, inner product) with its
metadata tables is written once with delta-rs; then each code version is started as its
own server process on 127.0.0.1 (`--before`: the stdlib ThreadingHTTPServer of the main
branch, `make_server`; `--after`: this checkout's FastAPI + uvicorn app, `create_app`),
warmed with 20 queries, and loaded by --clients threads issuing GET /search?q=<caption>&k=20
(tiny-clip text encoding + faiss + filters + JSON) on fresh connections for --seconds.
Reported per version: requests/s, p50 and p99 latency, errors. Ends with one line:
`result: before_rps=... after_rps=... ratio=<after/before> before_p99_ms=... after_p99_ms=...`.
Run it on an otherwise idle machine: both servers and the clients share its cores.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

SERVER = r"""
import sys, time
from laion_spark.config import load_config
from laion_spark.index.search import Searcher
import laion_spark.serve.app as app_mod
cfg = load_config("local", [f"workdir={sys.argv[1]}"])
port = int(sys.argv[2])
searcher = Searcher.open(None, cfg)
if hasattr(app_mod, "create_app"):  # FastAPI + uvicorn
    import uvicorn
    app = app_mod.create_app(searcher, cfg, watch=True)
    config = app_mod.uvicorn_config(app, cfg, "127.0.0.1", port)
    print("READY after", flush=True)
    uvicorn.Server(config).run()
else:  # the stdlib server
    server = app_mod.make_server(searcher, cfg, "127.0.0.1", port)
    print("READY before", flush=True)
    server.serve_forever()
"""


def build_workdir(wd: str, n: int, seed: int = 0) -> list[str]:
    """Tables + one merged Flat index written without Spark; returns the captions."""
    import faiss
    import pyarrow as pa
    from deltalake import write_deltalake

    from laion_spark.config import load_config
    from laion_spark.demo.synthetic import make_samples
    from laion_spark.ids import sample_id
    from laion_spark.models.clip import load_clip
    from laion_spark.tables import arrow_schema

    cfg = load_config("local", [f"workdir={wd}"])
    clip = load_clip(cfg.embed, device="cpu")
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, clip.dim)).astype("float32")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    samples = make_samples(min(n, 2000), seed=seed)
    captions = [samples[i % len(samples)].caption for i in range(n)]
    urls = [f"http://127.0.0.1:9/b/{i}.jpg" for i in range(n)]
    sids = [sample_id(u, c) for u, c in zip(urls, captions, strict=True)]
    fids = np.arange(n, dtype="int64")
    index = faiss.index_factory(clip.dim, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)
    index.add_with_ids(x, fids)
    path = f"{wd}/indexes/main/merged/merged-bench.index"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    faiss.write_index(index, path)
    root = cfg.tables_root

    def write(name: str, cols: dict) -> None:
        schema = arrow_schema(name, list(cols))
        write_deltalake(f"{root}/{name}", pa.table(cols, schema=schema), mode="overwrite")

    write(
        "candidates",
        {
            "sample_id": sids,
            "url": urls,
            "text": captions,
            "language": ["en" if i % 3 else "de" for i in range(n)],
        },
    )
    write(
        "embeddings",
        {
            "sample_id": sids,
            "model_id": [clip.model_id] * n,
            "similarity": rng.random(n).astype("float32"),
        },
    )
    write(
        "scores",
        {
            "sample_id": sids,
            "punsafe": (rng.random(n) * 0.6).astype("float32"),
            "pwatermark": rng.random(n).astype("float32"),
        },
    )
    write(
        "index_ids",
        {"index_name": ["main"] * n, "sample_id": sids, "faiss_id": fids, "shard": ["bench"] * n},
    )
    import datetime

    write(
        "index_manifest",
        {
            "index_name": ["main"],
            "shard": ["merged-bench"],
            "kind": ["merged"],
            "path": [path],  # absolute: what the main branch writes (and still read after)
            "factory": ["IDMap2,Flat"],
            "model_id": [clip.model_id],
            "count": [n],
            "dim": [clip.dim],
            "created_at": [datetime.datetime.now(datetime.UTC)],
            "metric": ["ip"],
            "params": ["{}"],
        },
    )
    return captions


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(base: str, captions: list[str], clients: int, seconds: float):
    """(latencies in s, errors) of `clients` threads querying for `seconds`."""
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.time() + seconds

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while time.time() < stop:
            q = urllib.parse.quote(captions[int(rng.integers(len(captions)))])
            t = time.perf_counter()
            try:
                with urllib.request.urlopen(f"{base}/search?q={q}&k=20", timeout=60) as r:
                    r.read()
                    ok = r.status == 200
            except Exception:
                ok = False
            dt = time.perf_counter() - t
            with lock:
                if ok:
                    lat.append(dt)
                else:
                    errors[0] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, errors[0]


def measure(code: str, wd: str, captions: list[str], clients: int, seconds: float) -> dict:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.path.abspath(code))
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, wd, str(port)],
        env=env,
        cwd=os.path.abspath(code),  # `python -c` puts the cwd first on sys.path
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = ""
        t0 = time.time()
        while "READY" not in line:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                raise RuntimeError(f"server from {code} exited")
            if time.time() - t0 > 300:
                raise RuntimeError(f"server from {code} did not start")
        kind = line.split()[-1]
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):  # uvicorn prints READY before binding
            try:
                urllib.request.urlopen(base + "/health", timeout=5).read()
                break
            except Exception:
                time.sleep(0.1)
        load(base, captions, 1, 0)  # connection check
        warm, _ = load(base, captions[:20], 1, 3)
        lat, errors = load(base, captions, clients, seconds)
        arr = np.array(lat) * 1000
        return {
            "kind": kind,
            "rps": len(lat) / seconds,
            "p50_ms": float(np.percentile(arr, 50)) if len(arr) else float("nan"),
            "p99_ms": float(np.percentile(arr, 99)) if len(arr) else float("nan"),
            "requests": len(lat),
            "errors": errors,
            "warm_requests": len(warm),
        }
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument(
        "--before",
        required=True,
        help="a checkout with the stdlib server, e.g. `git worktree add /tmp/serve-before "
        "ad3055a` (the last commit before the FastAPI service)",
    )
    ap.add_argument("--after", default=str(ROOT), help="checkout with the FastAPI service")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        wd = os.path.join(tmp, "wd")
        t = time.time()
        captions = build_workdir(wd, args.n)
        print(f"built {args.n} vectors in {time.time() - t:.1f} s")
        out = {}
        for name, code in (("before", args.before), ("after", args.after)):
            r = measure(code, wd, captions, args.clients, args.seconds)
            out[name] = r
            print(
                f"{name:<6} ({r['kind']}, {code}): {r['rps']:.1f} req/s, p50 {r['p50_ms']:.1f} ms, "
                f"p99 {r['p99_ms']:.1f} ms, {r['requests']} ok, {r['errors']} errors"
            )
    b, a = out["before"], out["after"]
    print(
        f"result: before_rps={b['rps']:.1f} after_rps={a['rps']:.1f} "
        f"ratio={a['rps'] / max(b['rps'], 1e-9):.2f} before_p99_ms={b['p99_ms']:.1f} "
        f"after_p99_ms={a['p99_ms']:.1f} clients={args.clients} n={args.n} "
        f"errors_before={b['errors']} errors_after={a['errors']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

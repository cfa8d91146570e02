"""Download benchmark: laion_spark's download stage vs img2dataset on the same images.

    .venv/bin/python benchmarks/bench_download.py --n 2000 --cores 2

One loopback ImageServer (its own process, 127.0.0.1 only) serves N generated JPEGs
(laion_spark.demo.synthetic, 512x512). Both tools download and resize them to 256,
border, jpg quality 95, with the same number of cores:
  * img2dataset (PyPI) from its own venv benchmarks/.venvs/img2dataset (created here),
    `--processes_count <cores> --thread_count <threads>`, output_format files;
  * this stage: `run(spark, cfg, tables)` on a local[<cores>] Spark session (session
    already started, as inside a pipeline), candidates -> images Delta table incl. MERGE.
Also measured (no Spark, one process): thread pool vs asyncio fetch+resize, and a
fetch-only rate as the raw limit of this client+server pair.
Ends with one line: `result: ... ratio=<ours/img2dataset> ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _common import (
    IMG2DATASET_VENV,
    ensure_img2dataset,
    img2dataset_cmd,
    img2dataset_successes,
    our_download_overrides,
    peer_env,
    print_result,
    start_image_server,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------- img2dataset
def run_img2dataset(exe: str, urls: list[str], cores: int, threads: int, work: Path) -> dict:
    url_file = work / "urls.txt"
    url_file.write_text("\n".join(urls) + "\n")
    out = work / "i2d_out"
    shutil.rmtree(out, ignore_errors=True)
    env = peer_env()
    t_import = time.time()
    subprocess.run(
        [str(IMG2DATASET_VENV / "bin" / "python"), "-c", "import img2dataset"],
        env=env,
        check=True,
        capture_output=True,
    )
    import_s = time.time() - t_import
    cmd = img2dataset_cmd(
        exe,
        str(url_file),
        str(out),
        cores=cores,
        threads=threads,
        per_shard=max(1, len(urls) // cores),
    )
    t0 = time.time()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    return {
        "wall_s": wall,
        "import_s": import_s,
        "successes": img2dataset_successes(out),
        "rc": r.returncode,
        "stderr": r.stderr[-1500:],
        "cmd": " ".join(cmd[:1] + ["..."] + cmd[5:]),
    }


# ---------------------------------------------------------------- ours, in Spark
def run_ours(urls: list[str], cores: int, threads: int, work: Path) -> dict:
    from laion_spark.config import load_config
    from laion_spark.download.stage import run
    from laion_spark.ids import sample_id
    from laion_spark.session import get_spark
    from laion_spark.tables import Tables

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    cfg = load_config(
        "local",
        [
            f"workdir={work / 'ours'}",
            f"spark.master=local[{cores}]",
            *our_download_overrides(threads, partitions=cores),
        ],
    )
    spark = get_spark(cfg)
    tables = Tables(spark, cfg)
    rows = [(sample_id(u, f"c{i}"), u, f"c{i}") for i, u in enumerate(urls)]
    tables.upsert(
        spark.createDataFrame(rows, "sample_id string, url string, text string"), "candidates"
    )
    tables.ensure("images")
    t0 = time.time()
    res = run(spark, cfg, tables)
    wall = time.time() - t0
    return {
        "wall_s": wall,
        "successes": res.by_status.get("success", 0),
        "by_status": res.by_status,
        **res.notes,
    }


# ---------------------------------------------------------------- threads vs asyncio (no Spark)
def threads_rate(urls: list[str], threads: int, resize: bool = True) -> float:
    from laion_spark.download.fetch import Fetcher
    from laion_spark.download.settings import DownloadSettings
    from laion_spark.download.worker import download_rows, run_concurrently

    cfg = DownloadSettings(threads=threads, retries=0, allow_networks=["127.0.0.1/32"])
    t0 = time.time()
    if resize:
        out = list(download_rows([(str(i), u) for i, u in enumerate(urls)], cfg))
        ok = sum(r["status"] == "success" for r in out)
    else:
        f = Fetcher(cfg)
        out = list(
            run_concurrently(
                [(str(i), u) for i, u in enumerate(urls)],
                lambda s, u: {"status": f.fetch(u).status},
                threads,
            )
        )
        ok = sum(r["status"] == "success" for r in out)
    assert ok == len(urls), Counter(r["status"] for r in out)
    return len(urls) / (time.time() - t0)


async def _async_fetch_all(urls: list[str], conns: int, offload: bool) -> int:
    """A minimal keep-alive HTTP/1.1 asyncio client (the fastest asyncio shape we know
    without extra packages), resize inline or in a thread pool."""
    from urllib.parse import urlsplit

    from laion_spark.download.resize import process_image
    from laion_spark.download.settings import DownloadSettings

    cfg = DownloadSettings()
    queue: asyncio.Queue = asyncio.Queue()
    for u in urls:
        queue.put_nowait(u)
    ok = 0
    loop = asyncio.get_running_loop()

    async def worker() -> None:
        nonlocal ok
        p = urlsplit(urls[0])
        reader, writer = await asyncio.open_connection(p.hostname, p.port)
        while True:
            try:
                u = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            path = urlsplit(u).path
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {p.netloc}\r\nUser-Agent: bench\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = await reader.readexactly(length)
            if offload:
                r = await loop.run_in_executor(None, process_image, body, cfg)
            else:
                r = process_image(body, cfg)
            ok += r.status == "success"
        writer.close()

    await asyncio.gather(*(worker() for _ in range(conns)))
    return ok


def asyncio_rate(urls: list[str], conns: int, offload: bool) -> float:
    t0 = time.time()
    ok = asyncio.run(_async_fetch_all(urls, conns, offload))
    assert ok == len(urls)
    return len(urls) / (time.time() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--size", type=int, default=512, help="side of the served images")
    ap.add_argument("--skip-peer", action="store_true")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_download_"))
    proc, base = start_image_server(a.n, a.size)
    try:
        urls = [f"{base}/img/{i}.jpg" for i in range(a.n)]
        # peers only ever see 127.0.0.1 URLs
        assert all(u.startswith("http://127.0.0.1:") for u in urls)
        sub = urls[: min(len(urls), 1000)]
        threads_rate(sub[:100], a.threads)  # warm the server's route cache and imports
        # interleaved repeats, medians: the shared machine's load changes minute to minute
        reps: dict[str, list[float]] = {"thr": [], "async": [], "async_off": [], "fetch": []}
        for _ in range(3):
            reps["thr"].append(threads_rate(sub, a.threads))
            reps["async"].append(asyncio_rate(sub, a.threads, offload=False))
            reps["async_off"].append(asyncio_rate(sub, a.threads, offload=True))
            reps["fetch"].append(threads_rate(sub, a.threads, resize=False))
        print({k: [round(x) for x in v] for k, v in reps.items()}, flush=True)
        med = {k: sorted(v)[1] for k, v in reps.items()}
        t_thr, t_async, t_async_off, fetch_only = (
            med["thr"],
            med["async"],
            med["async_off"],
            med["fetch"],
        )
        print(
            f"one process, {len(sub)} images: threads {t_thr:.0f}/s, asyncio inline {t_async:.0f}/s, "
            f"asyncio+executor {t_async_off:.0f}/s, fetch-only (threads) {fetch_only:.0f}/s",
            flush=True,
        )

        peer = None
        if not a.skip_peer:
            exe = ensure_img2dataset()
            if exe:
                peer = run_img2dataset(exe, urls, a.cores, a.threads, work)
                print(f"img2dataset: {peer}", flush=True)
        ours = run_ours(urls, a.cores, a.threads, work)
        print(f"laion_spark: {ours}", flush=True)
        ours_rate = ours["successes"] / ours["wall_s"]
        fields = {
            "n": a.n,
            "cores": a.cores,
            "threads": a.threads,
            "ours_img_s": round(ours_rate, 1),
            "ours_ok": ours["successes"],
            "ours_wall_s": round(ours["wall_s"], 1),
            "ours_fetch_resize_s": ours.get("fetch_s"),
            "ours_merge_s": ours.get("merge_s"),
        }
        if peer and peer["successes"]:
            peer_rate = peer["successes"] / peer["wall_s"]
            peer_rate_noimport = peer["successes"] / max(1e-9, peer["wall_s"] - peer["import_s"])
            fields.update(
                peer_img_s=round(peer_rate, 1),
                peer_ok=peer["successes"],
                peer_img_s_excl_startup=round(peer_rate_noimport, 1),
                ratio=round(ours_rate / peer_rate, 2),
                ratio_vs_peer_excl_startup=round(ours_rate / peer_rate_noimport, 2),
            )
        else:
            fields["ratio"] = "n/a"
        fields.update(
            threads_img_s=round(t_thr, 1),
            asyncio_img_s=round(t_async, 1),
            asyncio_executor_img_s=round(t_async_off, 1),
            fetch_only_img_s=round(fetch_only, 1),
        )
        print_result(fields)
    finally:
        proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The embed stage on a GPU, end to end: JPEG bytes in Delta -> CLIP (fp16) -> Delta commit.

    .venv/bin/python benchmarks/gpu/bench_gpu_embed.py --n 100000 --decode both   # GPU machine
    .venv/bin/python benchmarks/gpu/bench_gpu_embed.py --cpu                      # CPU fallback

1. generate --n samples: 256x256 JPEGs of the demo's shapes (--distinct images cycled over
   unique URLs/captions, so every row is its own sample), written as `candidates` + `images`
   Delta tables under a temp workdir;
2. a ViT-B-32 with random weights saved as a local checkpoint, one per decode mode (speed does
   not depend on the weights; their different model ids give each mode all rows to embed);
   --model/--pretrained take real weights, for one decode mode;
3. for each decode mode (cpu: PIL on the task's threads; device: nvJPEG + preprocess on the
   GPU), run the embed stage (`run_stage("embed")`) on a local[--cores] Spark session: every
   task uses the GPU, fp16 autocast;
4. alongside, nvidia-smi samples GPU utilisation every 250 ms; and, outside Spark, the two
   halves are timed alone on a sample: decode (CPU threads, and on the device) and the model
   on preprocessed batches, so the split between decode and compute is known.

Ends with one line per decode mode `result: decode=... samples_per_s=... gpu_util=...
decode_ips=... compute_ips=... n=...`: samples_per_s is rows embedded / stage seconds
(Delta read, decode, model, Delta MERGE commit all included).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def jpegs(distinct: int, size: int) -> list[bytes]:
    from laion_spark.demo.synthetic import make_samples

    return [s.jpeg(size=size) for s in make_samples(distinct, seed=5)]


def write_tables(spark, tables, n: int, images: list[bytes]) -> None:
    import pyarrow as pa

    from laion_spark.ids import sample_id

    step = 20_000
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        urls = [f"http://127.0.0.1/gpu/{i}.jpg" for i in range(lo, hi)]
        caps = [f"a generated shape number {i}" for i in range(lo, hi)]
        ids = [sample_id(u, c) for u, c in zip(urls, caps, strict=True)]
        cand = pa.table({"sample_id": ids, "url": urls, "text": caps})
        img = pa.table(
            {
                "sample_id": ids,
                "url": urls,
                "status": ["success"] * len(ids),
                "image": [images[i % len(images)] for i in range(lo, hi)],
            }
        )
        tables.upsert(spark.createDataFrame(cand.to_pandas()), "candidates", update=False)
        tables.upsert(spark.createDataFrame(img.to_pandas()), "images", update=False, dedup=False)


class GpuSampler:
    """nvidia-smi utilisation samples while a block runs (empty without nvidia-smi)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(
                [
                    "nvidia-smi",
                    "--query-gpu=utilization.gpu",
                    "--format=csv,noheader,nounits",
                    "-lms",
                    "250",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                self.samples.append(float(line.strip().split(",")[0]))
            except ValueError:
                pass

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=5)

    @property
    def mean(self) -> float | None:
        return round(statistics.mean(self.samples), 1) if self.samples else None


def split(clip, images: list[bytes], threads: int, batch: int, decode: str) -> tuple[float, float]:
    """(decode images/s, model images/s) measured alone on `images`."""
    import torch

    from laion_spark.models.device_decode import decode_on_device

    t0 = time.perf_counter()
    if decode == "device":
        parts = [
            decode_on_device(clip, images[i : i + batch]) for i in range(0, len(images), batch)
        ]
        tensors = [t for p in parts for t in p]
        if clip.device.startswith("cuda"):
            torch.cuda.synchronize()
    else:
        with ThreadPoolExecutor(threads) as pool:
            tensors = list(pool.map(clip.decode, images))
    decode_ips = len(images) / (time.perf_counter() - t0)
    stacked = torch.stack([t.to(clip.device) for t in tensors[:batch]])
    clip.encode_image_tensor(stacked)  # warm-up (cudnn, autocast)
    reps = max(1, len(images) // batch)
    t0 = time.perf_counter()
    for _ in range(reps):
        clip.encode_image_tensor(stacked)
    compute_ips = reps * len(stacked) / (time.perf_counter() - t0)
    return round(decode_ips, 1), round(compute_ips, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=None, help="samples (default 100000; --cpu: 128)")
    ap.add_argument("--cpu", action="store_true", help="CPU fallback: small n, device cpu, fp32")
    ap.add_argument("--decode", choices=["cpu", "device", "both"], default="both")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained", help="a local checkpoint (default: random weights)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--batch", type=int, default=None, help="images per forward pass")
    ap.add_argument("--decode-threads", type=int, default=None)
    ap.add_argument("--distinct", type=int, default=512, help="distinct JPEGs cycled over rows")
    ap.add_argument("--size", type=int, default=256, help="JPEG side in pixels")
    args = ap.parse_args()
    n = args.n or (128 if args.cpu else 100_000)
    batch = args.batch or (32 if args.cpu else 512)
    threads = args.decode_threads or (2 if args.cpu else 8)

    import torch

    from laion_spark.config import load_config
    from laion_spark.models.clip import load_clip
    from laion_spark.session import get_spark
    from laion_spark.stage import run_stage
    from laion_spark.tables import Tables

    if not args.cpu and not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: run with --cpu for the CPU fallback")
    modes = ["cpu", "device"] if args.decode == "both" else [args.decode]
    if args.pretrained and len(modes) > 1:
        sys.exit("--pretrained measures one decode mode: give --decode cpu or --decode device")
    work = Path(tempfile.mkdtemp(prefix="gpu_embed_"))

    def checkpoint(seed: int) -> str:
        if args.pretrained:
            return args.pretrained
        import open_clip

        torch.manual_seed(seed)
        logging.getLogger().setLevel(logging.ERROR)  # open_clip: "initialized randomly" (meant)
        path = str(work / f"{args.model}-random-{seed}.pt")
        torch.save(open_clip.create_model(args.model, pretrained=None).state_dict(), path)
        return path

    device = "cpu" if args.cpu else "cuda"
    base = [
        f"workdir={work}",
        f"spark.master=local[{args.cores}]",
        f"embed.model={args.model}",
        f"embed.device={device}",
        f"embed.precision={'fp32' if args.cpu else 'fp16'}",
        f"embed.batch_size={batch}",
        f"embed.arrow_batch_size={batch * 4}",
        f"embed.decode_threads={threads}",
        f"embed.cpu_threads={1 if args.cpu else 0}",
    ]
    cfg = load_config("local", base)
    spark = get_spark(cfg)
    tables = Tables(spark, cfg)
    images = jpegs(args.distinct, args.size)
    t0 = time.time()
    write_tables(spark, tables, n, images)
    print(f"[gpu-bench] {n} samples written to Delta in {time.time() - t0:.0f}s", flush=True)
    for seed, mode in enumerate(modes):
        cfg = load_config(
            "local", [*base, f"embed.decode={mode}", f"embed.pretrained={checkpoint(seed)}"]
        )
        clip = load_clip(cfg.embed)
        decode_ips, compute_ips = split(clip, images[:256] * 8, threads, batch, mode)
        with GpuSampler() as gpu:
            res = run_stage("embed", spark, cfg, Tables(spark, cfg))
        sps = res.rows_out / res.seconds if res.seconds else 0.0
        print(
            f"result: decode={mode} samples_per_s={sps:.0f} gpu_util={gpu.mean} "
            f"decode_ips={decode_ips} compute_ips={compute_ips} n={res.rows_out} "
            f"seconds={res.seconds:.1f} device={res.notes.get('device')} model={args.model} "
            f"batch={batch} cores={args.cores}",
            flush=True,
        )
    spark.stop()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

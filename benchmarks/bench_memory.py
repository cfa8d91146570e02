"""Peak memory of one download task and one extract task fed hostile inputs.

    .venv/bin/python benchmarks/bench_memory.py                 # every case, 32 threads
    .venv/bin/python benchmarks/bench_memory.py --cases png_81mp_alpha --threads 4 --copies 4

What a Spark executor's Python worker holds is what one task's function holds, so each case
runs that function in a fresh process (this script with --child) and reads the process's
peak resident memory (VmHWM) before and after the work; `peak_mb` is the high-water
mark, `added_mb` what the case added on top of the imports. The hostile server is this
process (laion_spark.demo.image_server, 127.0.0.1 only); nothing leaves loopback.

Download cases (`download_rows`, the stage's per-task function, `--threads` fetch threads,
`--copies` URLs of the case in one task, the stage's default settings):
- body_10gb: a 10 GB body streamed without Content-Length (close-delimited): read until
  `max_bytes` (20 MB), then refused;
- body_10gb_declared: the same with its Content-Length: refused from the header;
- gzip_bomb_1gb: 1 GB of zeros gzip-encoded (1 MB on the wire), Content-Encoding: gzip;
- pixel_bomb: a 100-byte PNG whose header claims 30000 x 30000 pixels;
- png_81mp_alpha: a real 9000 x 9000 RGBA PNG (330 KB on the wire, 81 MP decoded: under
  `max_pixels`, so it is decoded and resized);
- jpeg_24mp: a real 6000 x 4000 JPEG (a camera photo's size).
Extract case (`iter_file`, the stage's per-file function):
- wat_300mb_record: a WAT whose second record's JSON is 300 MB (gzip: 0.3 MB), between
  ordinary records: skipped at `max_wat_record_bytes` while the others are read.
Embed cases (the stage's mapInArrow function with tiny-clip on the CPU and the default
`embed:` settings, fed Arrow batches cut at `embed.arrow_batch_size` rows or
`embed.arrow_batch_mb` as Spark cuts them;
images the download stage did not resize, as `laion-spark import` brings in a pool):
- embed_jpeg_12mp: 1,024 rows of a 4000 x 3000 camera-size JPEG (1.4 MB);
- embed_jpeg_60mp: 16 rows of a 9000 x 6600 JPEG (just under `embed.max_image_pixels`).

Ends with `result: <case>_peak_mb=... <case>_added_mb=...`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import print_result, project_python, scratch  # noqa: E402

DOWNLOAD_CASES = (
    "body_10gb",
    "body_10gb_declared",
    "gzip_bomb_1gb",
    "pixel_bomb",
    "png_81mp_alpha",
    "jpeg_24mp",
)
EXTRACT_CASES = ("wat_300mb_record",)
EMBED_CASES = {"embed_jpeg_12mp": (4000, 3000, 1024), "embed_jpeg_60mp": (9000, 6600, 16)}
GB = 1 << 30


def _peak_mb() -> float:
    """This process's peak resident memory (VmHWM). Not ru_maxrss: Linux carries that across
    exec from the forking parent, so a child would start at this script's own size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------- inputs (made by the parent, served or written once) ----------------


def _gzip_bomb(inflated: int) -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip wrapper
    zeros = b"\0" * (1 << 24)
    parts = [comp.compress(zeros) for _ in range(inflated // len(zeros))]
    return b"".join(parts) + comp.flush()


def _png_rgba(side: int) -> bytes:
    import cv2
    import numpy as np

    img = np.zeros((side, side, 4), np.uint8)
    img[..., 1], img[..., 3] = 200, 128
    img[::97, :, 0] = 255  # a little structure
    return cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()


def _jpeg(w: int, h: int, grain: int = 0) -> bytes:
    """A gradient; `grain` adds noise of that amplitude, so the file has a photo's size."""
    import cv2
    import numpy as np

    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    img[..., 2] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    if grain:
        noise = np.random.default_rng(0).integers(0, grain, (h, w, 1), dtype=np.uint8)
        img = cv2.add(img, np.repeat(noise, 3, axis=2))
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def _embed_worker() -> tuple[dict, str]:
    """What an embed task is handed (worker config, model id), with the model loaded and
    cached in this process as a Python worker holds it before any task."""
    from laion_spark.embed.settings import EmbedSettings
    from laion_spark.embed.stage import worker_config
    from laion_spark.models.clip import load_clip

    conf = worker_config(EmbedSettings(model="tiny-clip", device="cpu"))
    return conf, load_clip(EmbedSettings(**conf)).model_id


def _embed(path: str, rows: int, conf: dict, model_id: str) -> dict[str, int]:
    """The embed stage's per-task function over `rows` copies of the image at `path`."""
    import pyarrow as pa

    from laion_spark.embed.stage import _embed_partition

    data = Path(path).read_bytes()
    # Spark cuts a batch at arrow_batch_size rows or arrow_batch_mb (maxBytesPerBatch)
    per = min(int(conf["arrow_batch_size"]), max(1, (int(conf["arrow_batch_mb"]) << 20) // len(data)))

    def batches():  # made when pulled, one at a time, as Spark's Arrow stream hands them
        for start in range(0, rows, per):
            n = min(per, rows - start)
            yield pa.record_batch(
                [pa.array([f"s{start + i}" for i in range(n)]),
                 pa.array([data] * n, pa.binary()), pa.array(["a photo"] * n)],
                names=["sample_id", "image", "text"],
            )

    statuses: dict[str, int] = {}
    for out in _embed_partition(conf, model_id)(batches()):
        for st in out.column("status").to_pylist():
            statuses[st] = statuses.get(st, 0) + 1
    return statuses


def _pixel_bomb(w: int = 30000, h: int = 30000) -> bytes:
    import struct

    import cv2
    import numpy as np

    data = bytearray(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    body = bytearray(data[16:29])
    body[0:8] = struct.pack(">II", w, h)
    data[16:29] = body
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(body)) & 0xFFFFFFFF)
    return bytes(data)


def _wat_with_huge_record(path: Path, huge: int) -> None:
    """A WAT: an ordinary page, a metadata record of `huge` bytes, another ordinary page."""
    from laion_spark.demo.crawl import write_synthetic_crawl

    pages = [
        {"url": f"http://site{i}.test/p", "images": [(f"http://img.test/{i}.jpg", f"a photo {i}")]}
        for i in range(2)
    ]
    paths = write_synthetic_crawl(str(path.parent / "crawl"), pages)
    normal = gzip.decompress(Path(paths["wat"]).read_bytes())
    head = (
        "WARC/1.0\r\nWARC-Type: metadata\r\nWARC-Target-URI: http://huge.test/\r\n"
        "WARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-000000000001>\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {huge}\r\n\r\n"
    ).encode()
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)
    with open(path, "wb") as f:
        f.write(gzip.compress(normal))  # its own members: the ordinary records
        f.write(comp.compress(head + b'{"Envelope": {"x": "'))
        chunk = b"a" * (1 << 24)
        left = huge - len(b'{"Envelope": {"x": "') - len(b'"}}')
        while left > 0:
            f.write(comp.compress(chunk[: min(left, len(chunk))]))
            left -= len(chunk)
        f.write(comp.compress(b'"}}\r\n\r\n'))
        f.write(comp.flush())
        f.write(gzip.compress(normal))


# ---------------- the child: one case in a fresh process ----------------


def child(case: str, arg: str, threads: int, copies: int) -> None:
    from laion_spark.download.settings import DownloadSettings
    from laion_spark.download.worker import download_rows
    from laion_spark.extract.reader import FileStats, iter_file

    worker = _embed_worker() if case in EMBED_CASES else None  # before the base is read
    base = _peak_mb()
    t0 = time.monotonic()
    statuses: dict[str, int] = {}
    if worker is not None:
        statuses = _embed(arg, copies, *worker)
    elif case in EXTRACT_CASES:
        for item in iter_file(arg, {}):
            if isinstance(item, FileStats):
                d = item.as_dict()
                statuses = {"file": d["status"], "records": d["records"], "pairs": d["pairs"]}
                statuses.update(d["errors"])
    else:
        cfg = DownloadSettings(threads=threads, allow_networks=["127.0.0.1/32"])
        rows = download_rows([(f"{i}", f"{arg}?{i}") for i in range(copies)], cfg)
        for r in rows:
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    out = {
        "base_mb": round(base),
        "peak_mb": round(_peak_mb()),
        "seconds": round(time.monotonic() - t0, 1),
        "statuses": statuses,
    }
    print("CHILD " + json.dumps(out, default=str), flush=True)


def run_child(case: str, arg: str, threads: int, copies: int) -> dict:
    cmd = [project_python(), __file__, "--child", case, "--arg", arg]
    cmd += ["--threads", str(threads), "--copies", str(copies)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), no_proxy="127.0.0.1", http_proxy="")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith("CHILD "):
            return json.loads(line[6:])
    raise RuntimeError(f"{case}: child failed (rc {proc.returncode}): {proc.stderr[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(DOWNLOAD_CASES + EXTRACT_CASES + tuple(EMBED_CASES)))
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--copies", type=int, default=32)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--arg", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.arg, a.threads, a.copies)
        return
    from laion_spark.demo.image_server import ImageServer, Route

    cases = [c for c in a.cases.split(",") if c]
    fields: dict[str, object] = {"threads": a.threads, "copies": a.copies}
    with ImageServer() as srv, scratch("bench_memory_") as tmp:
        # handlers match by prefix: no case's path may start with another's
        srv.add_handler("/close-10gb", lambda _p: Route(stream_bytes=10 * GB, declare_length=False))
        srv.add_handler("/declared-10gb", lambda _p: Route(stream_bytes=10 * GB))
        paths = {"body_10gb": "/close-10gb", "body_10gb_declared": "/declared-10gb"}
        made = {}
        for case in cases:
            if case == "gzip_bomb_1gb":
                made[case] = _gzip_bomb(GB)
                srv.add_handler(
                    f"/{case}",
                    lambda _p, b=made[case]: Route(b, headers={"Content-Encoding": "gzip"}),
                )
            elif case == "pixel_bomb":
                made[case] = _pixel_bomb()
                srv.add_handler(f"/{case}", lambda _p, b=made[case]: Route(b, "image/png"))
            elif case == "png_81mp_alpha":
                made[case] = _png_rgba(9000)
                srv.add_handler(f"/{case}", lambda _p, b=made[case]: Route(b, "image/png"))
            elif case == "jpeg_24mp":
                made[case] = _jpeg(6000, 4000)
                srv.add_handler(f"/{case}", lambda _p, b=made[case]: Route(b))
        print("| case | on the wire | threads x copies | peak MB | added MB | seconds | statuses |")
        print("|---|---|---|---|---|---|---|")
        for case in cases:
            copies = a.copies
            if case in EMBED_CASES:
                w, h, copies = EMBED_CASES[case]
                path = Path(tmp) / f"{case}.jpg"
                path.write_bytes(_jpeg(w, h, grain=8))
                arg, wire = str(path), f"{path.stat().st_size / 1e6:.1f} MB per row"
            elif case in EXTRACT_CASES:
                path = Path(tmp) / "huge.warc.wat.gz"
                _wat_with_huge_record(path, 300_000_000)
                arg, wire = str(path), f"{path.stat().st_size / 1e6:.1f} MB file"
            else:
                arg = srv.url(paths.get(case, f"/{case}"))
                wire = (
                    "10 GB" if case.startswith("body_10gb") else f"{len(made[case]) / 1e3:.1f} kB"
                )
            r = run_child(case, arg, a.threads, copies)
            added = r["peak_mb"] - r["base_mb"]
            par = "1 file" if case in EXTRACT_CASES else f"{a.threads} x {copies}"
            if case in EMBED_CASES:
                par = f"{copies} rows"
            print(
                f"| {case} | {wire} | {par} | {r['peak_mb']} | {added} | {r['seconds']} "
                f"| {r['statuses']} |",
                flush=True,
            )
            fields[f"{case}_peak_mb"] = r["peak_mb"]
            fields[f"{case}_added_mb"] = added
    print_result(fields)


if __name__ == "__main__":
    main()

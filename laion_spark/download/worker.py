"""Inside one Spark task: fetch + resize many samples concurrently, yield Arrow batches.

Concurrency is a thread pool (measured faster than an asyncio client here, see
docs/download.md): network waits release the GIL, and so do OpenCV's decode, resize and
encode, so one pool does both I/O and CPU work without a hand-off queue. At most
`threads` samples are in flight (total cap); the Fetcher caps requests per host.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import pyarrow as pa

from laion_spark.download.fetch import Fetcher
from laion_spark.download.resize import process_image
from laion_spark.download.settings import DownloadSettings
from laion_spark.tables import SPECS, arrow_schema
from laion_spark.takedown.pdq import hash_image

# statuses worth another try with --retry-failed (the server or network may recover)
RETRYABLE_STATUSES = ("failed_to_download", "timeout", "http_error", "empty_body")

# the images columns a task yields (downloaded_at is added at commit time)
OUTPUT_COLUMNS = [f.name for f in SPECS["images"].schema.fields if f.name != "downloaded_at"]
OUTPUT_SCHEMA = arrow_schema("images", OUTPUT_COLUMNS)
_EMPTY = {f.name: None for f in OUTPUT_SCHEMA}


def process_sample(
    sample_id: str,
    url: str | None,
    fetcher: Fetcher,
    cfg: DownloadSettings,
    taken_down_sha256: frozenset[str] = frozenset(),
    taken_down_md5: frozenset[str] = frozenset(),
) -> dict:
    """One sample -> one output row (never raises: an unexpected error is a status too)."""
    row = dict(_EMPTY, sample_id=sample_id, url=url)
    t0 = time.monotonic()
    try:
        if not url:
            row.update(status="failed_to_download", error_message="empty URL")
            return row
        fr = fetcher.fetch(url)
        row.update(http_status=fr.http_status, fetch_seconds=round(fr.seconds, 4))
        if fr.status != "success" or fr.body is None:
            row.update(status=fr.status, error_message=fr.error)
            return row
        body = fr.body
        if taken_down_sha256 or taken_down_md5:
            if (
                hashlib.sha256(body).hexdigest() in taken_down_sha256
                or hashlib.md5(body).hexdigest() in taken_down_md5
            ):
                row.update(
                    status="taken_down", error_message="original image hash is on the takedown list"
                )
                return row
        rr = process_image(body, cfg)
        row.update(
            status=rr.status,
            error_message=rr.error,
            original_width=rr.original_width,
            original_height=rr.original_height,
            original_format=rr.source_format,
        )
        if rr.status != "success" or rr.image is None:
            return row
        digest = hashlib.sha256(rr.image).hexdigest()
        if digest in taken_down_sha256 or (
            taken_down_md5 and hashlib.md5(rr.image).hexdigest() in taken_down_md5
        ):
            row.update(status="taken_down", error_message="image hash is on the takedown list")
            return row
        row.update(
            image=rr.image,
            width=rr.width,
            height=rr.height,
            sha256=digest,
            format=rr.format,
            num_bytes=len(rr.image),
        )
        # PDQ of the stored image (what takedown --kind pdq / screen match against); a
        # failure here leaves the hash null, it never fails the sample
        try:
            pdq = hash_image(rr.image)
        except Exception:  # hashing is best effort
            pdq = None
        if pdq is not None:
            row.update(pdq=pdq[0], pdq_quality=pdq[1])
        return row
    except Exception as e:  # a bug or an exotic input must not fail the Spark task
        row.update(
            status="failed_to_download", error_message=f"unexpected {type(e).__name__}: {e}"[:500]
        )
        return row
    finally:
        if row.get("fetch_seconds") is None:
            row["fetch_seconds"] = round(time.monotonic() - t0, 4)


def run_concurrently(
    items: Iterable[tuple[str, str | None]], fn: Callable[[str, str | None], dict], threads: int
) -> Iterator[dict]:
    """fn over items with at most `threads` in flight; results in completion order.

    A sliding window (not chunk-by-chunk) so slow URLs never stall a whole batch.
    """
    it = iter(items)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="laion-dl") as pool:
        inflight: set[Future] = set()
        for sid, url in it:
            inflight.add(pool.submit(fn, sid, url))
            if len(inflight) >= threads * 2:
                done, inflight = wait(inflight, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()
        while inflight:
            done, inflight = wait(inflight, return_when=FIRST_COMPLETED)
            for f in done:
                yield f.result()


def download_rows(
    rows: Iterable[tuple[str, str | None]],
    cfg: DownloadSettings,
    taken_down_sha256: frozenset[str] = frozenset(),
    taken_down_md5: frozenset[str] = frozenset(),
) -> Iterator[dict]:
    """(sample_id, url) pairs -> output rows, concurrently (usable without Spark)."""
    fetcher = Fetcher(cfg)

    def one(sid: str, url: str | None) -> dict:
        return process_sample(sid, url, fetcher, cfg, taken_down_sha256, taken_down_md5)

    yield from run_concurrently(rows, one, cfg.threads)


def to_batch(rows: list[dict]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows, schema=OUTPUT_SCHEMA)


def download_partition(
    batches: Iterator[pa.RecordBatch],
    cfg: DownloadSettings,
    taken_down_sha256: frozenset[str] = frozenset(),
    taken_down_md5: frozenset[str] = frozenset(),
    out_rows: int = 256,
) -> Iterator[pa.RecordBatch]:
    """The mapInArrow function body: input batches of (sample_id, url) -> image rows."""

    def pairs() -> Iterator[tuple[str, str | None]]:
        for b in batches:
            d = b.to_pydict()
            yield from zip(d["sample_id"], d["url"], strict=True)

    buf: list[dict] = []
    for row in download_rows(pairs(), cfg, taken_down_sha256, taken_down_md5):
        buf.append(row)
        if len(buf) >= out_rows:
            yield to_batch(buf)
            buf = []
    if buf:
        yield to_batch(buf)

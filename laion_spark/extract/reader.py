"""Stream one WAT or WARC file record by record, with bounded memory, into pairs + stats.

`extract_file(path, options)` is what one Spark task runs for one input file. It never
raises for bad input: broken records are counted by reason in the file's stats, and a
stream that breaks off (truncated/corrupt gzip) ends the file with what was read so far.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, BinaryIO

from fastwarc.warc import ArchiveIterator, WarcRecordType

from laion_spark.extract.html import HtmlError, parse_html
from laion_spark.extract.pairs import Page, Pair, Rules, fill_language, page_pairs
from laion_spark.extract.wat import WatError, parse_wat_json
from laion_spark.extract.wat_native import WatExtractor, wat_extractor

# error reasons (keys of extract_stats.errors)
OPEN_FAILED = "open_failed"
STREAM_ERROR = "stream_error"
TRUNCATED_RECORD = "truncated_record"
PAGE_TOO_LARGE = "page_too_large"
RECORD_TOO_LARGE = "record_too_large"
RECORD_ERROR = "record_error"
# non-errors counted in `rejected` (pages that cannot hold pairs)
NOT_HTML = "page_not_html"
HTTP_NOT_OK = "page_http_not_ok"

# pyo3 panics (fastwarc's Rust core) derive from BaseException, not Exception
_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit)
_CRAWL_ID = re.compile(r"CC-MAIN-\d{4}-\d{2}")
_IS_PART_OF = re.compile(r"^isPartOf:\s*(\S+)", re.M)
_READ_CHUNK = 1 << 16
# pairs collected across pages before language id runs over them in one go
LANGUAGE_BATCH = 256


@dataclass
class FileStats:
    source_file: str
    records: int = 0
    pages: int = 0
    pairs: int = 0
    bad_records: int = 0
    rejected: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    status: str = "ok"
    error_message: str | None = None
    crawl_id: str | None = None

    def error(self, reason: str, detail: str, bad_record: bool = True) -> None:
        self.errors[reason] += 1
        if bad_record:
            self.bad_records += 1
        if self.error_message is None:
            self.error_message = f"{reason}: {detail}"[:500]

    def as_dict(self) -> dict[str, Any]:
        return {
            "source_file": self.source_file,
            "records": self.records,
            "pages": self.pages,
            "pairs": self.pairs,
            "bad_records": self.bad_records,
            "rejected": dict(self.rejected),
            "errors": dict(self.errors),
            "seconds": self.seconds,
            "status": self.status,
            "error_message": self.error_message,
            "crawl_id": self.crawl_id,
        }


class _CountingReader:
    """File wrapper that remembers whether the underlying stream reached its end."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.eof = False
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        if not b:
            self.eof = True
        self.pos += len(b)
        return b

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        # fastwarc only seeks to where it is; a real seek would break the EOF bookkeeping
        if (whence == 0 and offset == self.pos) or (whence == 1 and offset == 0):
            return self.pos
        raise OSError("stream is not seekable")

    def close(self) -> None:
        self.f.close()


def open_input(path: str) -> BinaryIO:
    """Local path or any fsspec URL (s3://, https://, ...), opened for streaming."""
    if "://" in path and not path.startswith("file://"):
        import fsspec

        return fsspec.open(path, "rb").open()
    return open(path[7:] if path.startswith("file://") else path, "rb")


def _read_bounded(record, limit: int) -> tuple[bytes | None, bool]:
    """(payload, complete) reading at most `limit` bytes; None when it is larger."""
    want = record.content_length
    if want > limit:
        return None, True
    data = record.reader.read(want) if want else b""
    return data, len(data) >= want


def crawl_id_from(path: str, configured: str | None) -> str | None:
    if configured:
        return configured
    m = _CRAWL_ID.search(path)
    return m.group(0) if m else None


@dataclass(frozen=True)
class RowFormat:
    """Pairs as the caller's row tuples: `prefix` + the Pair fields up to `license` +
    `suffix(offset, crawl_id)`. The compiled WAT path builds these tuples itself, so no
    Pair object is made per pair (the extract stage's rows, see stage.row_format)."""

    prefix: tuple
    suffix: Callable[[int, str | None], tuple]

    def row(self, p: Pair, offset: int) -> tuple:
        return (
            *self.prefix,
            p.sample_id,
            p.url,
            p.text,
            p.page_url,
            p.language,
            p.language_score,
            p.language_group,
            p.license,
            *self.suffix(offset, p.crawl_id),
        )


def _finished(batch: list[tuple[Pair, int]], rules: Rules, rows: RowFormat | None) -> list:
    """The batch with language id done: (pair, offset) items, or their rows."""
    fill_language([p for p, _ in batch], rules)
    return batch if rows is None else [rows.row(p, offset) for p, offset in batch]


def extract_records(
    stream: BinaryIO,
    source_file: str,
    rules: Rules,
    stats: FileStats,
    rows: RowFormat | None = None,
) -> Iterator[tuple]:
    """(pair, record offset) for every pair in the stream, or each pair's row when `rows`
    is given, in stream order; stats updated in place."""
    wanted = WarcRecordType.warcinfo | WarcRecordType.response | WarcRecordType.metadata
    src = _CountingReader(stream)
    it = ArchiveIterator(src, record_types=wanted, parse_http=True, max_content_length=None)
    batch: list[tuple[Pair, int]] = []  # pairs waiting for language id (fill_language)
    native = wat_extractor(rules)
    while True:
        if len(batch) >= LANGUAGE_BATCH:
            yield from _finished(batch, rules, rows)
            batch = []
        try:
            record = next(it)
        except StopIteration:
            break
        except BaseException as e:  # a corrupt header / gzip member ends what can be read
            if isinstance(e, _PASS_THROUGH):
                raise
            stats.error(STREAM_ERROR, repr(e)[:300])
            break
        stats.records += 1
        offset = record.stream_pos
        n0, ready = len(batch), None
        try:
            page = _record_page(record, offset, rules, stats, native, rows)
            if page.__class__ is list and rows is not None:
                ready = page  # rows of the compiled WAT path, language set
            elif page is not None:
                found = (
                    page
                    if page.__class__ is list  # pairs of the compiled WAT path
                    else page_pairs(page, rules, stats.rejected, True, stats.crawl_id)
                )
                batch.extend(zip(found, repeat(offset)))
        except BaseException as e:  # never let one record kill the file
            if isinstance(e, _PASS_THROUGH):
                raise
            stats.error(RECORD_ERROR, f"offset {offset}: {e!r}"[:300])
        stats.pairs += len(batch) - n0  # what a failing page yielded before failing stays
        if ready:
            stats.pairs += len(ready)
            if batch:  # earlier pairs first: the output keeps the stream's order
                yield from _finished(batch, rules, rows)
                batch = []
            yield from ready
    if native is not None:
        native.drain_rejected(stats.rejected)
    yield from _finished(batch, rules, rows)
    if not src.eof and not stats.errors.get(STREAM_ERROR):
        # fastwarc stopped before the end of the file: garbage or a broken gzip member
        stats.error(STREAM_ERROR, f"reading stopped at byte {src.pos} before end of file")


def _record_page(
    record,
    offset: int,
    rules: Rules,
    stats: FileStats,
    native: WatExtractor | None = None,
    rows: RowFormat | None = None,
) -> Page | list | None:
    """The Page of a WAT metadata or WARC response record (None for other records and bad
    ones, which are counted in stats); for a WAT record the compiled extractor (`native`)
    handles, its pairs instead (as rows when `rows` is given)."""
    rtype = record.record_type
    if rtype == WarcRecordType.warcinfo:
        if stats.crawl_id is None:
            data, _ = _read_bounded(record, 1 << 16)
            text = (data or b"").decode("utf-8", "replace")
            m = _IS_PART_OF.search(text) or _CRAWL_ID.search(text)
            stats.crawl_id = (m.group(1) if m.re is _IS_PART_OF else m.group(0)) if m else None
        return None
    if rtype == WarcRecordType.metadata:
        ctype = (record.headers.get("Content-Type") or "").lower()
        if "json" not in ctype:
            return None  # WARC metadata records (fetchTimeMs ...), not WAT
        data, complete = _read_bounded(record, rules.max_wat_record_bytes)
        if data is None:
            stats.error(RECORD_TOO_LARGE, f"offset {offset}: {record.content_length} bytes")
            return None
        if not complete:
            stats.error(TRUNCATED_RECORD, f"offset {offset}: record cut short")
            return None
        # cheap pre-filter: a record without an IMG link has no pairs, skip the JSON parse
        if b'"IMG@' not in data:
            if b'"HTML-Metadata"' in data:
                stats.pages += 1
            return None
        if native is not None:
            # WAT JSON names its page; without it the core hands the record back (below)
            got = (
                native(data, None, stats.crawl_id)
                if rows is None
                else native.rows(data, rows.prefix, rows.suffix(offset, stats.crawl_id))
            )
            if got is False:
                return None  # not an HTML response (request, non-HTML metadata)
            if got is not None:
                stats.pages += 1
                return got
            # None: a shape the compiled path leaves to Python (errors are counted there)
        try:
            page = parse_wat_json(data, record.headers.get("WARC-Target-URI"))
        except WatError as e:
            stats.error(e.reason, f"offset {offset}: {e}")
            return None
        if page is None:
            return None
        stats.pages += 1
    elif rtype == WarcRecordType.response:
        if not record.is_http:
            return None
        status = record.http_headers.status_code
        ctype = (record.http_content_type or "").lower()
        if "html" not in ctype:
            stats.rejected[NOT_HTML] += 1
            return None
        if status is not None and not 200 <= status < 300:
            stats.rejected[HTTP_NOT_OK] += 1
            return None
        data, complete = _read_bounded(record, rules.max_page_bytes)
        if data is None:
            stats.error(PAGE_TOO_LARGE, f"offset {offset}: {record.content_length} bytes")
            return None
        if not complete:
            stats.error(TRUNCATED_RECORD, f"offset {offset}: record cut short")
            return None
        data = _maybe_decompress(data, record.http_headers.get("Content-Encoding"), rules)
        if data is None:
            stats.error(PAGE_TOO_LARGE, f"offset {offset}: decompressed body over the limit")
            return None
        url = record.headers.get("WARC-Target-URI")
        if not url:
            stats.error(RECORD_ERROR, f"offset {offset}: response without WARC-Target-URI")
            return None
        try:
            page = parse_html(data, url, record.http_charset, rules.use_srcset)
        except HtmlError as e:
            stats.error(e.reason, f"offset {offset}: {e}")
            return None
        stats.pages += 1
    else:
        return None
    return page


def _maybe_decompress(data: bytes, encoding: str | None, rules: Rules) -> bytes | None:
    """Common Crawl stores bodies decoded; other WARCs may keep gzip. Bounded inflate."""
    if not data.startswith(b"\x1f\x8b") or "gzip" not in (encoding or "").lower():
        return data
    import zlib

    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, rules.max_page_bytes + 1)
    except zlib.error:
        return data  # not really gzip: parse what is there, decoding decides
    return None if len(out) > rules.max_page_bytes else out


def extract_file(
    path: str, options: dict | None = None
) -> tuple[list[tuple[Pair, int]], FileStats]:
    """All pairs of one file plus its stats (convenience for tests and small files)."""
    pairs: list[tuple[Pair, int]] = []
    stats = None
    for item in iter_file(path, options):
        if isinstance(item, FileStats):
            stats = item
        else:
            pairs.append(item)
    assert stats is not None
    return pairs, stats


def iter_file(
    path: str, options: dict | None = None, rows: RowFormat | None = None
) -> Iterator[tuple | FileStats]:
    """Streams (pair, offset) for one file (or each pair's row, see RowFormat), then its
    FileStats last. Never raises."""
    rules = Rules.from_options(options)
    t0 = time.perf_counter()
    stats = FileStats(source_file=path)
    try:
        stream = open_input(path)
    except Exception as e:
        stats.error(OPEN_FAILED, repr(e)[:300], bad_record=False)
        stats.status = "failed"
        stats.seconds = time.perf_counter() - t0
        yield stats
        return
    # config or file path first; else the warcinfo record's isPartOf (read when seen)
    stats.crawl_id = crawl_id_from(path, (options or {}).get("crawl_id"))
    try:
        yield from extract_records(stream, path, rules, stats, rows)
    except BaseException as e:  # last resort (e.g. the iterator cannot even start)
        if isinstance(e, _PASS_THROUGH):
            raise
        stats.error(STREAM_ERROR, repr(e)[:300])
    finally:
        try:
            stream.close()
        except Exception:
            pass
    stats.crawl_id = crawl_id_from(path, (options or {}).get("crawl_id")) or stats.crawl_id
    if stats.errors:
        stats.status = "partial" if stats.records else "failed"
    stats.seconds = time.perf_counter() - t0
    yield stats

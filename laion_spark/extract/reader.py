"""Stream one WAT or WARC file record by record, with bounded memory, into pairs + stats.

`extract_file(path, options)` is what one Spark task runs for one input file. It never
raises for bad input: broken records are counted by reason in the file's stats. Where the
stream breaks (a record whose Content-Length is wrong, a corrupt header or gzip member),
reading resumes at the next record boundary found after the broken record (the next gzip
member that starts a WARC record, or the next `WARC/1.x` line of an uncompressed file), so
one bad record does not cost the rest of the file; `stream_error` counts each break and
its message says which bytes were skipped. An ARC file (the format before WARC) ends
with status `unsupported_format` at once.
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

from laion_spark.extract.entities import wat_values_decoded
from laion_spark.extract.html import HtmlError, parse_html
from laion_spark.extract.pairs import (
    NOT_HTML,
    Page,
    PageRejected,
    Pair,
    Rules,
    fill_language,
    http_status_code,
    http_status_rejection,
    page_pairs,
)
from laion_spark.extract.urls import target_uri
from laion_spark.extract.wat import WatError, parse_wat_json
from laion_spark.extract.wat_native import WatExtractor, wat_extractor

# error reasons (keys of extract_stats.errors)
OPEN_FAILED = "open_failed"
STREAM_ERROR = "stream_error"
TRUNCATED_RECORD = "truncated_record"
PAGE_TOO_LARGE = "page_too_large"
RECORD_TOO_LARGE = "record_too_large"
RECORD_ERROR = "record_error"
UNSUPPORTED_FORMAT = "unsupported_format"
# `status` of a file in a format the reader does not read (not retried: it cannot change)
STATUS_UNSUPPORTED = "unsupported_format"

# pyo3 panics (fastwarc's Rust core) derive from BaseException, not Exception
_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit)
_CRAWL_ID = re.compile(r"CC-MAIN-\d{4}-\d{2}")
_IS_PART_OF = re.compile(r"^isPartOf:\s*(\S+)", re.M)
_READ_CHUNK = 1 << 16
# a page without IMG links is not JSON-parsed: its status is read from the bytes
_WAT_STATUS = re.compile(rb'"Response-Message"\s*:\s*\{[^{}]*?"Status"\s*:\s*"?(\d+)')
_GZIP_MEMBER = b"\x1f\x8b\x08"
# how far a resync looks for the next record (it reads on until the end of the file) and
# how many breaks one file may have before the rest is given up
_SCAN_CHUNK = 1 << 20
MAX_RESYNCS = 1000
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
    # WAT files: whether attribute values were taken as already decoded ("decoded") or
    # decoded here ("raw"), and why (extract.wat_entities, entities.wat_values_decoded)
    wat_entities: str | None = None

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
            "wat_entities": self.wat_entities,
        }


class _CountingReader:
    """File wrapper that remembers whether the underlying stream reached its end.

    `pos` starts at the file offset the stream is at (a resync starts mid-file: fastwarc's
    record offsets then stay file offsets); `head` is bytes already read from it (the
    format sniff), handed out first."""

    def __init__(self, f: BinaryIO, pos: int = 0, head: bytes = b""):
        self.f = f
        self.eof = False
        self.pos = pos
        self.head = head

    def read(self, n: int = -1) -> bytes:
        if self.head:
            b = self.head if n < 0 else self.head[:n]
            self.head = self.head[len(b) :]
        else:
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


def _open_at(path: str, offset: int) -> BinaryIO:
    """The file opened at byte `offset` (seek where the file object can, else read past)."""
    f = open_input(path)
    try:
        f.seek(offset)
        return f
    except (OSError, ValueError, AttributeError):
        pass
    left = offset
    while left > 0:
        b = f.read(min(left, _SCAN_CHUNK))
        if not b:
            break
        left -= len(b)
    return f


def _gzip_starts_record(data: bytes) -> bool | None:
    """Whether a gzip member starting at data[0] inflates to a WARC record header; None when
    `data` is too short to tell."""
    import zlib

    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, 16)
    except zlib.error:
        return False
    if len(out) < 7:
        return None if not d.eof and len(data) < _READ_CHUNK else False
    return out.startswith(b"WARC/1.")


def _plain_record_at(data: bytes, i: int) -> bool:
    return (
        data[i - 1 : i] == b"\n" and re.match(rb"WARC/1\.[01]\r?\n", data[i : i + 11]) is not None
    )


def next_record_start(path: str, after: int, gz: bool) -> int | None:
    """Offset of the first record that starts after byte `after`: the next gzip member that
    inflates to a WARC header, or the next `WARC/1.x` line of an uncompressed file."""
    marker = _GZIP_MEMBER if gz else b"WARC/1."
    f = _open_at(path, after + 1)
    try:
        base, buf, start, eof = after + 1, b"", 0, False  # base: file offset of buf[0]
        while True:
            if not eof:
                more = f.read(_SCAN_CHUNK)
                eof = not more
                buf += more
            while (i := buf.find(marker, start)) >= 0:
                if gz:
                    ok = _gzip_starts_record(buf[i : i + _READ_CHUNK])
                    if ok is None and not eof:
                        break  # too few bytes yet to tell
                else:
                    if len(buf) - i < 11 and not eof:
                        break
                    # a record header starts a line (the byte before it is ours: i >= 1)
                    ok = i >= 1 and _plain_record_at(buf, i)
                if ok:
                    return base + i
                start = i + 1
            else:
                start = max(start, len(buf) - len(marker) + 1)
            if eof:
                return None
            cut = max(0, start - 1)  # one byte of context before the next candidate
            base, buf, start = base + cut, buf[cut:], start - cut
    finally:
        try:
            f.close()
        except Exception:
            pass


def _read_bounded(record, limit: int) -> tuple[bytes | None, bool]:
    """(payload, complete) reading at most `limit` bytes; None when it is larger."""
    want = record.content_length
    if want > limit:
        return None, True
    data = record.reader.read(want) if want else b""
    return data, len(data) >= want


def _read_payload(
    record, limit: int, too_large: str, stats: FileStats, offset: int
) -> bytes | None:
    """The record's payload of at most `limit` bytes; None, counted in `stats` as
    `too_large` or TRUNCATED_RECORD, when it is larger or cut short."""
    data, complete = _read_bounded(record, limit)
    if data is None:
        stats.error(too_large, f"offset {offset}: {record.content_length} bytes")
        return None
    if not complete:
        stats.error(TRUNCATED_RECORD, f"offset {offset}: record cut short")
        return None
    return data


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


@dataclass
class _WatState:
    """Per file: the warcinfo text and, from the first WAT record on, whether the WAT's
    values are already decoded and the compiled extractor for that rule."""

    path: str
    rules: Rules
    warcinfo: str | None = None
    decoded: bool | None = None
    native: WatExtractor | None = None

    def decide(self, stats: FileStats) -> bool:
        if self.decoded is None:
            mode = self.rules.wat_entities
            if mode == "auto":
                self.decoded, why = wat_values_decoded(self.warcinfo, self.path)
            else:
                self.decoded, why = mode == "decoded", f"{mode}: extract.wat_entities"
            stats.wat_entities = why
            self.native = wat_extractor(self.rules, self.decoded)
        return self.decoded


def extract_records(
    stream: BinaryIO,
    source_file: str,
    rules: Rules,
    stats: FileStats,
    rows: RowFormat | None = None,
    head: bytes = b"",
) -> Iterator[tuple]:
    """(pair, record offset) for every pair in the stream, or each pair's row when `rows`
    is given, in stream order; stats updated in place. `head`: bytes already read from the
    stream. A break in the stream resumes at the next record (next_record_start), which
    reopens `source_file`."""
    wanted = WarcRecordType.warcinfo | WarcRecordType.response | WarcRecordType.metadata
    gz = head[:2] == b"\x1f\x8b"
    src = _CountingReader(stream, 0, head)
    it = ArchiveIterator(src, record_types=wanted, parse_http=True, max_content_length=None)
    batch: list[tuple[Pair, int]] = []  # pairs waiting for language id (fill_language)
    wat = _WatState(source_file, rules)
    opened: list[BinaryIO] = []  # streams a resync opened (the caller closes `stream`)
    last_start, suspect, resyncs = 0, False, 0
    try:
        while True:
            if len(batch) >= LANGUAGE_BATCH:
                yield from _finished(batch, rules, rows)
                batch = []
            broken: str | None = None
            try:
                record = next(it)
            except StopIteration:
                if not src.eof:  # fastwarc stopped early: garbage or a broken gzip member
                    broken = f"reading stopped at byte {src.pos} before the end of the file"
                elif suspect:  # the last record's length may have swallowed what follows
                    broken = ""
                else:
                    break
            except BaseException as e:  # a corrupt header / gzip member
                if isinstance(e, _PASS_THROUGH):
                    raise
                broken = repr(e)[:300]
            if broken is not None:
                nxt = None
                if resyncs < MAX_RESYNCS:
                    try:
                        nxt = next_record_start(source_file, last_start, gz)
                    except Exception:
                        nxt = None
                if broken:
                    where = f"resumed at byte {nxt}" if nxt is not None else "no record after it"
                    stats.error(
                        STREAM_ERROR, f"after the record at byte {last_start}: {broken}; {where}"
                    )
                if nxt is None:
                    break
                resyncs += 1
                restart = _open_at(source_file, nxt)
                opened.append(restart)
                src = _CountingReader(restart, nxt)
                it = ArchiveIterator(
                    src, record_types=wanted, parse_http=True, max_content_length=None
                )
                last_start, suspect = nxt, False
                continue
            stats.records += 1
            offset = last_start = record.stream_pos
            n0, ready = len(batch), None
            cut_before = _cut_records(stats)
            try:
                page = _record_page(record, offset, rules, stats, wat, rows)
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
            suspect = _cut_records(stats) > cut_before
            stats.pairs += len(batch) - n0  # what a failing page yielded before failing stays
            if ready:
                stats.pairs += len(ready)
                if batch:  # earlier pairs first: the output keeps the stream's order
                    yield from _finished(batch, rules, rows)
                    batch = []
                yield from ready
        if wat.native is not None:
            wat.native.drain_rejected(stats.rejected)
        yield from _finished(batch, rules, rows)
    finally:
        for f in opened:
            try:
                f.close()
            except Exception:
                pass


def _cut_records(stats: FileStats) -> int:
    """Records whose declared length was not read whole (it may be wrong)."""
    e = stats.errors
    return e.get(TRUNCATED_RECORD, 0) + e.get(RECORD_TOO_LARGE, 0) + e.get(PAGE_TOO_LARGE, 0)


def _record_page(
    record,
    offset: int,
    rules: Rules,
    stats: FileStats,
    wat: _WatState,
    rows: RowFormat | None = None,
) -> Page | list | None:
    """The Page of a WAT metadata or WARC response record (None for other records and bad
    ones, which are counted in stats); for a WAT record the compiled extractor handles, its
    pairs instead (as rows when `rows` is given)."""
    rtype = record.record_type
    if rtype == WarcRecordType.warcinfo:
        if wat.warcinfo is None:
            data, _ = _read_bounded(record, 1 << 16)
            text = (data or b"").decode("utf-8", "replace")
            name = record.headers.get("WARC-Filename") or ""
            wat.warcinfo = f"WARC-Filename: {name}\n{text}"
            if stats.crawl_id is None:
                m = _IS_PART_OF.search(text) or _CRAWL_ID.search(text)
                stats.crawl_id = (m.group(1) if m.re is _IS_PART_OF else m.group(0)) if m else None
        return None
    if rtype == WarcRecordType.metadata:
        ctype = (record.headers.get("Content-Type") or "").lower()
        if "json" not in ctype:
            return None  # WARC metadata records (fetchTimeMs ...), not WAT
        data = _read_payload(record, rules.max_wat_record_bytes, RECORD_TOO_LARGE, stats, offset)
        if data is None:
            return None
        decoded = wat.decide(stats)
        # cheap pre-filter: a record without an IMG link has no pairs, skip the JSON parse
        if b'"IMG@' not in data:
            if b'"HTML-Metadata"' in data:
                m = _WAT_STATUS.search(data)
                why = http_status_rejection(http_status_code(m.group(1).decode()) if m else None)
                if why:
                    stats.rejected[why] += 1
                else:
                    stats.pages += 1
            return None
        native = wat.native
        if native is not None:
            # WAT JSON names its page; without it the core hands the record back (below)
            got = (
                native(data, None, stats.crawl_id)
                if rows is None
                else native.rows(data, rows.prefix, rows.suffix(offset, stats.crawl_id))
            )
            if got is False:
                return None  # not an HTML response (request, non-HTML metadata, non-2xx)
            if got is not None:
                stats.pages += 1
                return got
            # None: a shape the compiled path leaves to Python (errors are counted there)
        try:
            page = parse_wat_json(data, record.headers.get("WARC-Target-URI"), decoded)
        except WatError as e:
            stats.error(e.reason, f"offset {offset}: {e}")
            return None
        except PageRejected as e:
            stats.rejected[e.reason] += 1
            return None
        if page is None:
            return None
        stats.pages += 1
    elif rtype == WarcRecordType.response:
        if not record.is_http:
            return None
        ctype = (record.http_content_type or "").lower()
        if "html" not in ctype:
            stats.rejected[NOT_HTML] += 1
            return None
        why = http_status_rejection(record.http_headers.status_code)
        if why:
            stats.rejected[why] += 1
            return None
        data = _read_payload(record, rules.max_page_bytes, PAGE_TOO_LARGE, stats, offset)
        if data is None:
            return None
        data = _maybe_decompress(data, record.http_headers.get("Content-Encoding"), rules)
        if data is None:
            stats.error(PAGE_TOO_LARGE, f"offset {offset}: decompressed body over the limit")
            return None
        url = target_uri(record.headers.get("WARC-Target-URI"))
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


def _read_head(stream: BinaryIO) -> bytes:
    """The first bytes of a file (enough to tell its format), read before fastwarc starts."""
    head = b""
    while len(head) < _READ_CHUNK:
        b = stream.read(_READ_CHUNK - len(head))
        if not b:
            break
        head += b
    return head


def sniff_unsupported(head: bytes) -> str | None:
    """Why a file that starts with `head` is in a format the reader does not read, or None.

    ARC (Internet Archive's format before WARC, Common Crawl's 2008-2012 crawls) starts with
    a `filedesc://` record, gzipped or not. fastwarc reads WARC only."""
    text = head
    if head[:2] == b"\x1f\x8b":
        import zlib

        try:
            text = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 256)
        except zlib.error:
            return None  # a broken gzip start: the WARC reader reports and resyncs it
    if text.lstrip(b"\r\n\t ").startswith(b"filedesc://"):
        return (
            "ARC file (the web archive format before WARC; it starts with a filedesc:// "
            "record): this reader reads WARC/WAT only. Convert it to WARC first (e.g. "
            "warchaeology's `warc convert arc`, or warcio's ArchiveIterator(arc2warc=True) "
            "into a WARCWriter) and extract the WARC; this file is not retried"
        )
    return None


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
        stats.error(OPEN_FAILED, f"cannot open {path}: {type(e).__name__}: {e}"[:500], False)
        stats.status = "failed"
        stats.seconds = time.perf_counter() - t0
        yield stats
        return
    # config or file path first; else the warcinfo record's isPartOf (read when seen)
    stats.crawl_id = crawl_id_from(path, (options or {}).get("crawl_id"))
    unsupported = None
    try:
        head = _read_head(stream)
        unsupported = sniff_unsupported(head)
        if unsupported is None:
            yield from extract_records(stream, path, rules, stats, rows, head)
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
    if unsupported is not None:
        stats.error(UNSUPPORTED_FORMAT, unsupported, bad_record=False)
        stats.status = STATUS_UNSUPPORTED
    elif stats.errors:
        stats.status = "partial" if stats.records else "failed"
    stats.seconds = time.perf_counter() - t0
    yield stats

"""A Delta data file corrupted, truncated or deleted under a table: the CLI says in one line
which file of which table, why, and how to repair it (not a stack trace); the repair it
names works."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pyspark.sql import Row

from laion_spark.cli.main import main


def _added_by(table_dir: Path, version: int) -> Path:
    log = table_dir / "_delta_log" / f"{version:020d}.json"
    adds = [json.loads(line)["add"]["path"] for line in log.read_text().splitlines() if '"add"' in line]
    assert len(adds) == 1, adds
    return table_dir / adds[0]


def _run_download(wd: Path) -> int:
    # the download stage reads candidates first (its anti-join against images)
    return main(["run", "download", "--set", f"workdir={wd}", "--set", "download.partitions=1"])


def test_broken_data_file_is_one_clear_line_naming_file_and_repair(spark, make_cfg, tmp_path, capsys):
    from laion_spark.tables import Tables

    wd = tmp_path / "wd"
    tables = Tables(spark, make_cfg(workdir=wd))
    for lo in (0, 3):  # versions 1 and 2 of candidates, one data file each
        rows = [Row(sample_id=f"s{i}", url=f"http://127.0.0.1:9/{i}.jpg", text="cap") for i in range(lo, lo + 3)]
        tables.upsert(spark.createDataFrame(rows).coalesce(1), "candidates")
    table_dir = Path(tables.location("candidates"))
    broken = _added_by(table_dir, 2)

    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])  # truncated, as by a crash mid-copy
    capsys.readouterr()
    assert _run_download(wd) == 1
    err = capsys.readouterr().err.strip().splitlines()
    failed = [line for line in err if line.startswith("laion-spark:")]
    assert len(failed) == 1, err
    line = failed[0]
    assert "Traceback" not in line and "at org." not in line
    assert "table candidates" in line and str(broken) in line
    assert "corrupt or truncated" in line
    restore = f"RESTORE TABLE delta.`{table_dir}` TO VERSION AS OF 1"
    assert "before version 2 wrote it" in line and restore in line, line

    os.remove(broken)  # deleted under the table: named as missing
    assert _run_download(wd) == 1
    line = [x for x in capsys.readouterr().err.splitlines() if x.startswith("laion-spark:")][0]
    assert f"data file {broken} is missing" in line and restore in line, line

    # the repair the message names works: the table reads again, with version 1's rows
    spark.sql(restore)
    ids = sorted(r["sample_id"] for r in tables.read("candidates").select("sample_id").collect())
    assert ids == ["s0", "s1", "s2"]


def test_empty_input_file_is_ok_with_zero_records(tmp_path):
    """An empty crawl file (a 0-byte download) is not an error: status ok, 0 records."""
    from laion_spark.extract.reader import extract_file

    for name in ("empty.warc.gz", "empty.warc.wat.gz", "empty.warc"):
        (tmp_path / name).write_bytes(b"")
        pairs, stats = extract_file(str(tmp_path / name))
        assert pairs == [] and stats.status == "ok" and stats.records == 0, (name, stats)
        assert not stats.errors and stats.error_message is None


def test_concurrent_writers_of_one_path_each_rename_a_whole_file(tmp_path):
    """write_bytes from many writers at once (two workers registering a model config, a
    speculative task re-writing a shard): a reader only ever sees one writer's whole file,
    no writer fails, and no temporary file is left."""
    import threading

    from laion_spark.storage import write_bytes

    path = str(tmp_path / "shared.bin")
    payloads = [bytes([i]) * (256 * 1024 + i) for i in range(6)]
    errors: list[BaseException] = []
    seen: set[int] = set()
    torn: list[int] = []  # sizes of files a reader saw half-written
    stop = threading.Event()

    def writer(data: bytes) -> None:
        try:
            for _ in range(60):
                write_bytes(path, data)
        except BaseException as e:  # a writer whose temporary file another one renamed
            errors.append(e)

    def reader() -> None:
        while not stop.is_set():
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                continue
            seen.add(len(data))
            if data not in payloads:
                torn.append(len(data))

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    r = threading.Thread(target=reader)
    r.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    r.join()
    assert not errors, errors[:3]
    assert not torn, f"torn files of {sorted(set(torn))[:5]} bytes"
    assert seen <= {len(p) for p in payloads} and seen
    assert sorted(os.listdir(tmp_path)) == ["shared.bin"]

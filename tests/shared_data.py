"""Where the reference data lives: `../shared/data` beside the checkout (read, never copied)."""

from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
COMMONCRAWL = SHARED_DATA / "commoncrawl"
WHIRLWIND_WARC = COMMONCRAWL / "whirlwind.warc.gz"
WHIRLWIND_WAT = COMMONCRAWL / "whirlwind.warc.wat.gz"

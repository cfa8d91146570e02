"""dpo_generate in this process, for small runs on local tables: no Spark job.

Through Spark, the demo's 447 prompts x 4 responses took 10 s, of which generation was
about 2.3 s: the pool's MERGE jobs, the probes and counts, two Python workers each loading
the model, the output MERGE. When every table the stage touches is a path table on this
machine and `sft_pool` (and, with `dpo.pool.from_images`, `images`) holds at most
`dpo.generate.local_max_rows` rows, the stage reads with delta-rs, generates here with
the same `generate_units`, and commits one delta-rs MERGE per table: the same keys, rows
and exactly-once rule as the Spark path. Sampling seeds follow the batches (the first
unit's key), so a response's text can differ from a Spark run's, as it does between two
Spark runs partitioned differently; keys, prompts, statuses and counts are the same.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from laion_spark.config import Config
from laion_spark.lake import read_rows, table_rows
from laion_spark.stage import StageResult
from laion_spark.tables import Tables, arrow_schema

log = logging.getLogger(__name__)

TABLES = ("images", "candidates", "sft_pool", "dpo_candidates")
EMPTY_POOL = "empty (import SFT data or set dpo.pool.from_images)"


def eligible(cfg: Config, tables: Tables) -> bool:
    """Whether this run may take the in-process path (the sizes are checked on the way)."""
    return cfg.dpo.generate.local_max_rows > 0 and all(tables.local(t) for t in TABLES)


def _bucket(sample_id: str) -> int | None:
    """The Spark path's `conv(substring(sample_id, 1, 8), 16, 10) % 10000` (hex ids)."""
    try:
        return int(sample_id[:8], 16) % 10000
    except (TypeError, ValueError):
        return None


def pool_from_images_local(cfg: Config, tables: Tables) -> int | None:
    """`pool.pool_from_images` here: rows inserted into `sft_pool`, or None when `images`
    holds more than `dpo.generate.local_max_rows` rows (the Spark path then adds them)."""
    import pyarrow as pa

    from laion_spark.dpo.pool import OK, pool_id
    from laion_spark.takedown.rules import is_taken_down, load_rules

    if not (tables.exists("images") and tables.exists("candidates")):
        return 0
    n = table_rows(tables.location("images"))
    if n is None or n > cfg.dpo.generate.local_max_rows:
        return None
    pool_cfg = cfg.dpo.pool
    instruction = pool_cfg.instruction
    keys = read_rows(tables.location("images"), ["sample_id", "url"], equals=("status", "success"))
    cut = int(round(pool_cfg.images_fraction * 10000))
    have: set[str] = set()
    if tables.exists("sft_pool"):
        have = set(read_rows(tables.location("sft_pool"), ["pool_id"]).column(0).to_pylist())
    rules = load_rules(tables)
    blocks = rules.blocks_urls()
    new: dict[str, tuple[str, str | None]] = {}  # sample_id -> (pool_id, url)
    for sid, url in zip(
        keys.column("sample_id").to_pylist(), keys.column("url").to_pylist(), strict=True
    ):
        if pool_cfg.images_fraction < 1:
            b = _bucket(sid)
            if b is None or b >= cut:
                continue
        pid = pool_id("images", sid, url, instruction)
        if pid in have or (blocks and is_taken_down(rules, url, sid)):
            continue
        new[sid] = (pid, url)
    if not new:
        return 0
    ids = sorted(new)
    got = read_rows(
        tables.location("images"), ["sample_id", "image", "sha256"], isin=("sample_id", ids)
    )
    caps = read_rows(tables.location("candidates"), ["sample_id", "text"], isin=("sample_id", ids))
    reference = dict(zip(caps.column(0).to_pylist(), caps.column(1).to_pylist(), strict=True))
    now = datetime.now(UTC)
    rows = []
    for sid, image, sha in zip(*(got.column(c).to_pylist() for c in got.column_names), strict=True):
        pid, url = new[sid]
        if sha is None and image is not None:
            sha = hashlib.sha256(image).hexdigest()
        rows.append(
            {
                "pool_id": pid,
                "source": "images",
                "original_id": sid,
                "sample_id": sid,
                "image_ref": url,
                "image": image,
                "image_sha256": sha,
                "instruction": instruction,
                "reference": reference.get(sid),
                "status": OK,
                "imported_at": now,
            }
        )
    out = pa.Table.from_pylist(rows, schema=arrow_schema("sft_pool"))
    return tables.upsert_local(out, "sft_pool", update=False)["num_inserted_rows"]


def run_local(
    cfg: Config, tables: Tables, t0: float, notes: dict[str, Any], limit: int | None
) -> StageResult | None:
    """Generate the pending (pool row, template) units here; None when `sft_pool` is over
    the bound or carries no row counts (the Spark path then runs)."""
    import pyarrow as pa

    from laion_spark.dpo.generate import EMPTY, FINAL, SUCCESS, fill_template, generate_units
    from laion_spark.models.device import resolve_device, set_torch_threads
    from laion_spark.models.vlm import load_vlm, model_name, vlm_model_id

    gen_cfg = cfg.dpo.generate
    notes = {**notes, "engine": "local"}

    def result(rows_in: int, by_status: dict[str, int], error: str | None = None) -> StageResult:
        out = sum(by_status.values())
        return StageResult(
            "dpo_generate", rows_in, out, by_status, time.time() - t0, notes, error=error
        )

    if not tables.exists("sft_pool"):
        notes["pool"] = EMPTY_POOL
        return result(0, {})
    n_pool = table_rows(tables.location("sft_pool"))
    if n_pool is None or n_pool > gen_cfg.local_max_rows:
        return None
    pool = read_rows(
        tables.location("sft_pool"), ["pool_id", "instruction"], equals=("status", "ok")
    )
    if not pool.num_rows:
        notes["pool"] = EMPTY_POOL
        return result(0, {})
    mid = vlm_model_id(gen_cfg)  # the weights' digest: no model load yet
    notes.update(model_id=mid, device=resolve_device(gen_cfg.device))
    done: set[tuple[str, str]] = set()
    redo = False  # rows of this model with a non-final status: the MERGE replaces them
    if tables.exists("dpo_candidates"):
        have = read_rows(
            tables.location("dpo_candidates"),
            ["pool_id", "template", "status"],
            equals=("model_id", mid),
        )
        for p, t, s in zip(*(have.column(c).to_pylist() for c in have.column_names), strict=True):
            if s in FINAL:
                done.add((p, t))
            elif s is not None:
                redo = True
    instruction = dict(zip(pool.column(0).to_pylist(), pool.column(1).to_pylist(), strict=True))
    templates = dict(sorted(gen_cfg.templates.items()))
    todo = sorted((p, t) for p in instruction for t in templates if (p, t) not in done)
    if limit:
        todo = todo[: int(limit)]
    if not todo:
        return result(0, {})
    images = read_rows(
        tables.location("sft_pool"),
        ["pool_id", "image"],
        isin=("pool_id", sorted({p for p, _ in todo})),
    )
    image = dict(zip(images.column(0).to_pylist(), images.column(1).to_pylist(), strict=True))
    units = [
        {
            "pool_id": p,
            "template": t,
            "prompt": fill_template(templates[t], instruction[p]),
            "image": image.get(p),
        }
        for p, t in todo
    ]
    vlm = load_vlm(gen_cfg, name=model_name(gen_cfg.model))
    if vlm.model_id != mid:
        raise RuntimeError(f"loaded {vlm.model_id}, expected {mid}: its weights changed mid-run")
    set_torch_threads(gen_cfg.cpu_threads, vlm.device)  # 0: torch's default, every core
    rows: list[dict] = []
    step = gen_cfg.batch_size * 8  # a whole number of generate() batches per progress line
    started = time.time()
    for i in range(0, len(units), step):
        rows.extend(generate_units(vlm, gen_cfg, units[i : i + step]))
        k = min(i + step, len(units))
        log.info(
            "dpo_generate: %d/%d prompts, %.1f prompts/s",
            k,
            len(units),
            k / max(time.time() - started, 1e-9),
        )
    now = datetime.now(UTC)
    for r in rows:
        r["generated_at"] = now
    out = pa.Table.from_pylist(rows, schema=arrow_schema("dpo_candidates"))
    tables.upsert_local(out, "dpo_candidates", update=redo)
    by_status = dict(Counter(r["status"] for r in rows))
    notes["responses_per_prompt"] = gen_cfg.responses_per_prompt
    error = None
    if by_status and not by_status.get(SUCCESS) and not by_status.get(EMPTY):
        error = f"no response generated ({by_status})"
    return result(len(todo), by_status, error)

"""EMBED with two text towers vs one: what routing captions by language group costs.

    .venv/bin/python benchmarks/bench_text_towers.py --n 20000 --repeat 3     # CPU, tiny models
    .venv/bin/python benchmarks/bench_text_towers.py --n 100000 --device cuda  # a GPU executor

The same generated samples (half English, half German/French/Spanish/Russian captions,
language groups from the language id, as extract sets them) are embedded:
1. one tower: `embed.text_towers` unset, every caption through the CLIP model's text tower
   (the stage as it was);
2. two towers: `embed.text_towers.multi/nolang = tiny-mclip`, the other half through the
   multilingual tower, in the same pass.
Measured for each: the single-process loop (decode + image tower + routed text, the raw
limit), the stage's compute pass (mapInArrow into a noop sink, every worker warmed, the
two configs alternated, best of --repeat) and the stage end to end (pending anti-join,
compute, Delta MERGE) into a fresh table each. Ends with one line:
`result: ratio=<two towers ÷ one, stage end to end samples/s> ...` (ratio < 1: the cost).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_data(n: int, seed: int = 91):
    """(rows, jpegs): half English, half the other languages; groups from the language id."""
    from laion_spark.demo.synthetic import CAPTION_LANGUAGES, make_samples
    from laion_spark.extract import language as lid
    from laion_spark.ids import sample_id

    samples = make_samples(n // 2, seed=seed, mismatch_rate=0.2)
    samples += make_samples(
        n - n // 2, seed=seed + 1, mismatch_rate=0.2, languages=CAPTION_LANGUAGES
    )
    rows = []
    for i, s in enumerate(samples):
        url = f"http://127.0.0.1/img/{i}.jpg"
        code, score = lid.detect(s.caption)
        rows.append(
            (sample_id(url, s.caption), url, s.caption, code, lid.language_group(code, score, 0.25))
        )
    return rows, [s.jpeg(64) for s in samples]


def write_tables(spark, tables, rows, jpegs) -> None:
    tables.upsert(
        spark.createDataFrame(
            rows,
            "sample_id string, url string, text string, language string, language_group string",
        ),
        "candidates",
    )
    tables.upsert(
        spark.createDataFrame(
            [(r[0], r[1], "success", j, 64, 64, "jpeg") for r, j in zip(rows, jpegs, strict=True)],
            "sample_id string, url string, status string, image binary, width int, "
            "height int, format string",
        ),
        "images",
    )


def plain_loop(clip, towers, jpegs, texts, groups, batch: int) -> float:
    """samples/s of one process: decode, image tower, each caption through its tower."""
    import torch

    from laion_spark.models.text_tower import encode_routed

    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.time()
    for i in range(0, len(jpegs), batch):
        x = torch.stack([clip.decode(b) for b in jpegs[i : i + batch]])
        img = clip.encode_image_tensor(x)
        txt, _ = encode_routed(clip, towers, texts[i : i + batch], groups[i : i + batch])
        _ = (img * txt).sum(1)
    return len(jpegs) / (time.time() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=2, help="compute passes per config (best)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()

    from laion_spark.config import load_config
    from laion_spark.embed import stage
    from laion_spark.models.clip import load_clip
    from laion_spark.models.text_tower import TINY_TOWER, load_text_towers
    from laion_spark.session import ARROW_BATCH_ROWS, get_spark
    from laion_spark.tables import Tables

    tmp = Path(tempfile.mkdtemp(prefix="bench_towers_"))
    base = [f"embed.device={args.device}", f"embed.batch_size={args.batch}"]
    two = f"embed.text_towers={{multi: {TINY_TOWER}, nolang: {TINY_TOWER}}}"
    cfgs = {
        "one": load_config("local", [f"workdir={tmp / 'one'}", *base]),
        "two": load_config("local", [f"workdir={tmp / 'two'}", *base, two]),
    }
    clip = load_clip(cfgs["one"].embed)
    towers = load_text_towers(cfgs["two"].embed, clip)  # tiny-mclip distilled once if needed
    rows, jpegs = make_data(args.n)
    texts, groups = [r[2] for r in rows], [r[4] for r in rows]
    share = sum(g != "en" for g in groups) / len(groups)
    print(
        f"{args.n} samples ({share:.0%} multi/nolang), {clip.model_id} + "
        f"{towers['multi'].model_id} on {clip.device}; cores {os.cpu_count()}",
        flush=True,
    )

    out: dict[str, float] = {}
    for name, tw in (("one", {}), ("two", towers)):
        plain_loop(clip, tw, jpegs[:256], texts[:256], groups[:256], args.batch)  # warm-up
        out[f"plain_{name}_sps"] = plain_loop(clip, tw, jpegs, texts, groups, args.batch)
    print(f"plain loop: {out['plain_one_sps']:.0f} vs {out['plain_two_sps']:.0f}/s", flush=True)

    spark = get_spark(cfgs["one"])
    par = spark.sparkContext.defaultParallelism
    spark.conf.set(ARROW_BATCH_ROWS, str(cfgs["one"].embed.arrow_batch_size))
    sources, fns = {}, {}
    for name, cfg in cfgs.items():
        tables = Tables(spark, cfg)
        write_tables(spark, tables, rows, jpegs)
        conf = stage.worker_config(cfg.embed, clip)
        ids = {g: t.model_id for g, t in towers.items()} if name == "two" else {}
        fns[name] = stage._embed_partition(conf, clip.model_id, ids)
        sources[name] = (
            stage.source_rows(tables, cfg.extract.english_codes).repartition(par).cache()
        )
        sources[name].count()

    def compute(name: str, df) -> float:
        t0 = time.time()
        df.mapInArrow(fns[name], stage.SPARK_OUT_SCHEMA).write.format("noop").mode(
            "overwrite"
        ).save()
        return time.time() - t0

    for name in cfgs:  # every worker loads both configs' models before timing
        compute(name, sources[name].limit(64 * par).repartition(par))
    times: dict[str, list[float]] = {"one": [], "two": []}
    for _ in range(args.repeat):
        for name in ("one", "two") if _ % 2 == 0 else ("two", "one"):
            times[name].append(compute(name, sources[name]))
    for name in cfgs:
        out[f"compute_{name}_sps"] = args.n / min(times[name])
        sources[name].unpersist()
    print(
        f"stage compute: {out['compute_one_sps']:.0f} vs {out['compute_two_sps']:.0f}/s",
        flush=True,
    )

    for name, cfg in cfgs.items():
        t0 = time.time()
        res = stage.run(spark, cfg, Tables(spark, cfg))
        secs = time.time() - t0
        assert res.by_status.get("success") == args.n, res.by_status
        out[f"stage_{name}_sps"] = args.n / secs
        print(f"stage {name}: {secs:.1f}s end to end, notes {res.notes}", flush=True)

    result = {
        "ratio": out["stage_two_sps"] / out["stage_one_sps"],
        "ratio_compute": out["compute_two_sps"] / out["compute_one_sps"],
        "ratio_plain": out["plain_two_sps"] / out["plain_one_sps"],
        **out,
        "n": args.n,
    }
    print(
        "result: "
        + " ".join(
            f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()
        )
    )


if __name__ == "__main__":
    main()

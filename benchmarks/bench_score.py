"""Score stage throughput: rows/s over N generated embeddings, against the in-process limit.

    .venv/bin/python benchmarks/bench_score.py --rows 20000 --dim 512

Writes N L2-normalised embeddings (+ captions) into a temporary Delta workdir, configures
a B/32-shaped NSFW head, a watermark embedding head, a linear aesthetic head, the word-list
toxicity scorer and zero-shot prompts, and times `laion_spark.score.stage.run` end to end
(read Delta, join captions, score, MERGE). The "raw limit" is `score_batch` on the same
rows in this process with no Spark (models + zero-shot + word list only). There is no peer
tool that scores LAION embeddings as a Spark stage, so no ratio= is reported.

`--watermark-image demo|laion-b3` adds the watermark image classifier, which re-reads image
bytes from `images` (generated 96-px JPEGs, 20% watermarked) and dominates the cost:
`demo` is the demo's trained tiny timm model (laion_spark.score.demo_heads, 48 px),
`laion-b3` an untrained efficientnet_b3a with LAION's head at 256 px (the architecture and
input of LAION's `watermark_model_v1.pt`; weights do not change the speed). The result line
then adds images_per_s (stage) and raw_images_per_s (same models, in process, no Spark):

    .venv/bin/python benchmarks/bench_score.py --rows 2000 --dim 64 --watermark-image demo
    .venv/bin/python benchmarks/bench_score.py --rows 2000 --dim 512 --watermark-image laion-b3
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import numpy as np
import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--watermark-image", choices=["none", "demo", "laion-b3"], default="none")
    args = ap.parse_args()
    n, d = args.rows, args.dim

    from laion_spark.config import load_config
    from laion_spark.models.heads import new_head, save_head
    from laion_spark.score.scoring import Models, score_batch
    from laion_spark.score.stage import build_plan, run
    from laion_spark.score.zeroshot import PromptEmbeddings
    from laion_spark.session import get_spark
    from laion_spark.tables import Tables

    work = tempfile.mkdtemp(prefix="bench_score_")
    try:
        heads = {}
        for kind in ("nsfw", "watermark", "aesthetic"):
            heads[kind] = save_head(f"{work}/{kind}.pt", kind, new_head(kind, d))
        cfg = load_config(
            "local",
            [
                f"workdir={work}/wd",
                f"score.nsfw_head={heads['nsfw']}",
                f"score.watermark_head={heads['watermark']}",
                f"score.aesthetic_head={heads['aesthetic']}",
            ],
        )
        images = _watermark_model(args.watermark_image, cfg, work)
        spark = get_spark(cfg)
        tables = Tables(spark, cfg)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(n, d)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        ids = [f"{i:032x}" for i in range(n)]
        caps = [f"a red circle on the left number {i}" for i in range(n)]
        model = "bench@000000000000"
        pdf = pd.DataFrame({"sample_id": ids, "model_id": model, "image_embedding": list(x)})
        tables.upsert(
            spark.createDataFrame(
                pdf, "sample_id string, model_id string, image_embedding array<float>"
            ),
            "embeddings",
        )
        tables.upsert(
            spark.createDataFrame(pd.DataFrame({"sample_id": ids, "text": caps})), "candidates"
        )
        blobs = [images[i % len(images)] for i in range(n)] if images else None
        if blobs:
            tables.upsert(
                spark.createDataFrame(
                    pd.DataFrame({"sample_id": ids, "status": "success", "image": blobs})
                ),
                "images",
            )

        def rand(k: int) -> np.ndarray:
            p = rng.normal(size=(k, d)).astype(np.float32)
            return p / np.linalg.norm(p, axis=1, keepdims=True)

        pe = PromptEmbeddings(rand(19), rand(5), rand(4), rand(4), rand(11), rand(21))
        t0 = time.time()
        res = run(spark, cfg, tables, model_id=model, prompt_embeddings=pe)
        stage_s = time.time() - t0
        assert res.rows_in == n, res
        # raw limit: the same models on the same rows in this process, no Spark / Delta
        plan = build_plan(cfg, model, None, pe, dim=d)
        models = Models(plan)
        batch = pd.DataFrame({"sample_id": ids, "image_embedding": list(x), "text": caps})
        if blobs:
            batch["image"] = blobs
        t1 = time.time()
        for i in range(0, n, cfg.score.batch_rows):
            score_batch(batch.iloc[i : i + cfg.score.batch_rows], plan, models, "cpu")
        raw_s = time.time() - t1
        stage_rps, raw_rps = n / stage_s, n / raw_s
        print(
            f"stage: {n} rows in {stage_s:.1f}s ({stage_rps:.0f} rows/s); by_status={res.by_status}"
        )
        print(f"in-process score_batch: {raw_s:.2f}s ({raw_rps:.0f} rows/s)")
        extra = ""
        if blobs:
            extra = (
                f" watermark_image={args.watermark_image} images_per_s={stage_rps:.1f}"
                f" raw_images_per_s={raw_rps:.1f}"
            )
        print(
            f"result: rows={n} dim={d} stage_rows_per_s={stage_rps:.0f} "
            f"raw_rows_per_s={raw_rps:.0f} efficiency={stage_rps / raw_rps:.3f}{extra}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _watermark_model(which: str, cfg, work: str) -> list[bytes]:
    """Configure the watermark image model; return the distinct JPEGs the rows cycle over."""
    if which == "none":
        return []
    from laion_spark.demo.synthetic import make_samples

    sc = cfg.score
    if which == "demo":
        from laion_spark.score.demo_heads import ensure_demo_heads

        heads = ensure_demo_heads(cfg.embed)  # trained once, cached
        sc.watermark_image_model = heads.watermark_image
        sc.watermark_image_arch = heads.watermark_arch
        sc.watermark_image_size = heads.watermark_size
    else:
        import torch

        from laion_spark.models.watermark import new_watermark_model

        sc.watermark_image_model = f"{work}/watermark_b3.pt"
        torch.save(new_watermark_model("efficientnet_b3a").state_dict(), sc.watermark_image_model)
        sc.watermark_image_arch, sc.watermark_image_size = "efficientnet_b3a", 256
    return [s.jpeg(96) for s in make_samples(256, seed=99, watermark_rate=0.2)]


if __name__ == "__main__":
    main()

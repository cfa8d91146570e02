"""Mini CLIP-DPO: does DPO on CLIP-mined pairs reduce a captioner's hallucinations?

    nice -n 19 .venv/bin/python -m benchmarks.minidpo.run [--pool 200] [--seeds 3] [--dpo-steps 150]

Per seed:
1. train the tiny captioner (tiny-llava: tiny-clip's image tower, frozen, + a small Llama
   decoder) on generated scenes for `--sft-steps` steps: it gets colours right and often
   names the wrong shape or position (the hallucinations);
2. write `--pool` new scenes as LLaVA-style SFT JSON, import them into `sft_pool`, and run
   the real stages: dpo_generate (N sampled responses to a short and a detailed prompt),
   dpo_score (tiny-clip), dpo_select (the default rules), export for TRL;
3. train with TRL's DPOTrainer on (a) the CLIP-DPO pairs and (b) the same number of random
   pairs of the same responses (control: DPO without CLIP's preference);
4. measure CHAIR-style hallucination rates (chair.py, exact on generated scenes) on
   `--eval` held-out scenes before and after, greedy and sampled, and the mined pairs'
   accuracy (chosen has fewer hallucinations than rejected).

Prints a markdown table (mean ± std over seeds) and one final `result:` line.
Each finished seed is printed as one JSON line first; `--from-log FILE` rebuilds the table
from those lines when a run was cut short.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.minidpo.chair import chair, judge

PROMPTS = {
    "short": "Give a short caption of the image.",
    "detailed": "Describe the image in detail.",
}


def write_sft(folder: Path, samples) -> str:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for s in samples:
        (folder / "images" / f"{s.index}.jpg").write_bytes(s.jpeg(64))
        records.append(
            {
                "id": f"s{s.index}",
                "image": f"images/{s.index}.jpg",
                "conversations": [{"from": "human", "value": "<image>\nDescribe the image."}],
            }
        )
    (folder / "sft.json").write_text(json.dumps(records))
    return str(folder / "sft.json")


def evaluate(model_dir: str, samples, sample: bool, seed: int = 0) -> dict[str, float]:
    """CHAIR over both prompts on held-out scenes (greedy, or one sample at T=1)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    proc = AutoProcessor.from_pretrained(model_dir)
    proc.tokenizer.padding_side = "left"
    captions, truths = [], []
    torch.manual_seed(seed)
    for text in PROMPTS.values():
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        prompt = proc.apply_chat_template(msgs, add_generation_prompt=True)
        for i in range(0, len(samples), 64):
            part = samples[i : i + 64]
            inputs = proc(
                images=[s.image(64) for s in part],
                text=[prompt] * len(part),
                return_tensors="pt",
                padding=True,
            )
            with torch.inference_mode():
                out = model.generate(
                    **inputs,
                    do_sample=sample,
                    temperature=1.0 if sample else None,
                    top_p=1.0 if sample else None,
                    max_new_tokens=24,
                    pad_token_id=proc.tokenizer.pad_token_id,
                )
            new = out[:, inputs["input_ids"].shape[1] :]
            captions += proc.tokenizer.batch_decode(new, skip_special_tokens=True)
            truths += [s.attrs for s in part]
    return chair(captions, truths)


def dpo_train(
    model_dir: str,
    data_dir: str,
    out: str,
    steps: int,
    batch: int,
    lr: float,
    beta: float,
    seed: int,
) -> str:
    """TRL DPOTrainer on an exported dataset; the vision tower stays frozen (as in LLaVA)."""
    import datasets
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOConfig, DPOTrainer

    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    model.model.vision_tower.requires_grad_(False)
    proc = AutoProcessor.from_pretrained(model_dir)
    ds = datasets.load_dataset("parquet", data_dir=data_dir, split="train")
    args = DPOConfig(
        output_dir=out,
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=lr,
        beta=beta,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_steps=max(1, steps // 5),
        seed=seed,
        dataloader_num_workers=0,
        lr_scheduler_type="constant",
        warmup_steps=0,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=proc)
    trainer.train()
    trainer.save_model(out)
    proc.save_pretrained(out)
    return out


def random_pairs(tables, n_pairs: int, out: str, seed: int) -> int:
    """`n_pairs` random (chosen, rejected) pairs of the same responses (same image, prompt)."""
    import datasets
    from pyspark.sql import functions as F

    from laion_spark.dpo.export import features, trl_record

    rng = random.Random(seed)
    cands = (
        tables.read("dpo_candidates")
        .where(F.col("status") == "success")
        .select("pool_id", "template", "prompt", "response")
        .toPandas()
    )
    images = tables.read("sft_pool").select("pool_id", "image").toPandas()
    image_of = dict(zip(images.pool_id, images.image, strict=True))
    groups = [g for _, g in cands.groupby(["pool_id", "template"]) if g.response.nunique() > 1]
    rows = []
    while len(rows) < n_pairs and groups:
        g = rng.choice(groups)
        a, b = g.sample(2, random_state=rng.randrange(2**31)).to_dict("records")
        if a["response"] == b["response"]:
            continue
        rec = trl_record(image_of[a["pool_id"]], a["prompt"], a["response"], b["response"])
        rows.append({**rec, "pair_id": f"r{len(rows)}", "margin": 0.0})
    Path(out).mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows, features=features()).to_parquet(f"{out}/part-00000.parquet")
    return len(rows)


def pair_accuracy(pairs, truth_of) -> dict[str, float]:
    """Of mined pairs: chosen has fewer / as many / more hallucinated mentions than rejected."""
    better = tie = worse = 0
    for _, p in pairs.iterrows():
        t = truth_of[p.pool_id]
        c, r = judge(p.chosen, t).hallucinated, judge(p.rejected, t).hallucinated
        better += c < r
        tie += c == r
        worse += c > r
    n = max(1, better + tie + worse)
    return {"pairs": better + tie + worse, "better": better / n, "tie": tie / n, "worse": worse / n}


def one_seed(spark, args, seed: int, base: Path) -> dict:
    from laion_spark.config import load_config
    from laion_spark.demo.synthetic import make_samples
    from laion_spark.dpo.export import export_dpo
    from laion_spark.dpo.pool import import_sft
    from laion_spark.dpo.tiny_llava import TRAIN_SEED, build_tiny_llava
    from laion_spark.stage import run_stage
    from laion_spark.tables import Tables

    t0 = time.time()
    wd = base / f"seed{seed}"
    captioner = build_tiny_llava(wd / "captioner", steps=args.sft_steps, seed=TRAIN_SEED + seed)
    pool = make_samples(args.pool, seed=10_000 + seed)
    held_out = make_samples(args.eval, seed=20_000 + seed)
    cfg = load_config(
        "local",
        [
            f"workdir={wd / 'lake'}",
            f"dpo.generate.model={captioner}",
            f"dpo.generate.responses_per_prompt={args.responses}",
            "dpo.generate.max_new_tokens=24",
            "dpo.generate.batch_size=32",
        ],
    )
    cfg.dpo.generate.templates = dict(PROMPTS)
    tables = Tables(spark, cfg)
    import_sft(spark, cfg, tables, write_sft(wd / "sft", pool))
    stages = {
        s: run_stage(s, spark, cfg, tables) for s in ("dpo_generate", "dpo_score", "dpo_select")
    }
    n_pairs = export_dpo(spark, cfg, tables, str(wd / "pairs"))
    truth_of = {}
    ids = tables.read("sft_pool").select("pool_id", "original_id").toPandas()
    by_index = {f"s{s.index}": s.attrs for s in pool}
    truth_of = {r.pool_id: by_index[r.original_id] for r in ids.itertuples()}
    mined = pair_accuracy(tables.read("dpo_pairs").toPandas(), truth_of)
    n_random = random_pairs(tables, n_pairs, str(wd / "random"), seed)
    cands = tables.read("dpo_candidates").where("status = 'success'").toPandas()
    sampled_pool = chair(list(cands.response), [truth_of[p] for p in cands.pool_id])
    out = {
        "seed": seed,
        "pairs": n_pairs,
        "random_pairs": n_random,
        "mined": mined,
        "pool_responses_chair_s": sampled_pool["chair_s"],
        "select": stages["dpo_select"].by_status,
    }
    kw = dict(steps=args.dpo_steps, batch=args.batch, lr=args.lr, beta=args.beta, seed=seed)
    models = {
        "before": captioner,
        "clip_dpo": dpo_train(captioner, str(wd / "pairs"), str(wd / "dpo_clip"), **kw),
        "random_dpo": dpo_train(captioner, str(wd / "random"), str(wd / "dpo_random"), **kw),
    }
    for name, path in models.items():
        out[name] = {
            "greedy": evaluate(path, held_out, sample=False),
            "sampled": evaluate(path, held_out, sample=True, seed=seed),
        }
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out, default=str), flush=True)
    return out


def _ms(values: list[float]) -> str:
    m = statistics.mean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.3f} ± {s:.3f}"


def summarize(runs: list[dict], seconds: float) -> None:
    """The markdown table (mean ± std over seeds) and the final `result:` line."""
    print(
        "\n| model | decoding | CHAIR_s | CHAIR_i | all correct | shape errors / caption | "
        "position errors / caption |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in ("before", "clip_dpo", "random_dpo"):
        for dec in ("greedy", "sampled"):
            col = [r[name][dec] for r in runs]
            print(
                f"| {name} | {dec} | {_ms([c['chair_s'] for c in col])} | "
                f"{_ms([c['chair_i'] for c in col])} | {_ms([c['all_correct'] for c in col])} | "
                f"{_ms([c['per_caption_shape'] for c in col])} | "
                f"{_ms([c['per_caption_position'] for c in col])} |"
            )
    mined = [r["mined"] for r in runs]
    print(
        f"\nmined pairs per seed: {[m['pairs'] for m in mined]}; chosen better "
        f"{_ms([m['better'] for m in mined])}, tie {_ms([m['tie'] for m in mined])}, "
        f"worse {_ms([m['worse'] for m in mined])}; total {seconds:.0f}s"
    )

    def mean(name, dec, key):
        return statistics.mean(r[name][dec][key] for r in runs)

    print(
        f"result: chair_s_before={mean('before', 'greedy', 'chair_s'):.4f} "
        f"chair_s_clip_dpo={mean('clip_dpo', 'greedy', 'chair_s'):.4f} "
        f"chair_s_random_dpo={mean('random_dpo', 'greedy', 'chair_s'):.4f} "
        f"chair_i_before={mean('before', 'greedy', 'chair_i'):.4f} "
        f"chair_i_clip_dpo={mean('clip_dpo', 'greedy', 'chair_i'):.4f} "
        f"pair_better={statistics.mean(m['better'] for m in mined):.4f} seeds={len(runs)}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pool", type=int, default=200, help="scenes in the SFT pool")
    p.add_argument("--eval", type=int, default=200, help="held-out scenes per prompt")
    p.add_argument("--sft-steps", type=int, default=400)
    p.add_argument("--responses", type=int, default=6, help="sampled responses per prompt")
    p.add_argument("--dpo-steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--workdir", help="keep everything here (default: a temporary folder)")
    p.add_argument(
        "--from-log",
        help="summarise the per-seed JSON lines an earlier (possibly interrupted) run printed",
    )
    args = p.parse_args(argv)
    if args.from_log:
        lines = Path(args.from_log).read_text().splitlines()
        runs = [json.loads(ln) for ln in lines if ln.startswith('{"seed"')]
        if not runs:
            raise SystemExit(f"no finished seed in {args.from_log}")
        summarize(runs, sum(r["seconds"] for r in runs))
        return 0

    from laion_spark.config import load_config
    from laion_spark.session import get_spark

    base = Path(args.workdir or tempfile.mkdtemp(prefix="minidpo-"))
    spark = get_spark(load_config("local", [f"workdir={base}"]))
    t0 = time.time()
    try:
        runs = [one_seed(spark, args, seed, base) for seed in range(args.seeds)]
    finally:
        spark.stop()
        if not args.workdir:
            shutil.rmtree(base, ignore_errors=True)
    summarize(runs, time.time() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""CLIP-DPO through Spark on real Delta tables: import, generate (tiny LLaVA), score (tiny-clip),
select, export for TRL, and the pair accuracy on responses with known injected hallucinations."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F
from test_dpo import tiny_llava_at

from laion_spark.config import load_config
from laion_spark.demo.synthetic import COLORS, POSITIONS, SHAPES, make_samples
from laion_spark.dpo import select as sel_mod
from laion_spark.dpo import textheavy
from laion_spark.dpo.generate import import_responses
from laion_spark.dpo.pool import import_sft
from laion_spark.dpo.settings import SelectSettings
from laion_spark.stage import run_stage
from laion_spark.tables import Tables


def write_sft(folder, samples, extra_images: dict[str, bytes] | None = None) -> str:
    """LLaVA-style JSON + image folder for generated samples (and extra named images)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for s in samples:
        (folder / "images" / f"{s.index}.jpg").write_bytes(s.jpeg(64))
        records.append(
            {
                "id": f"s{s.index}",
                "image": f"images/{s.index}.jpg",
                "conversations": [
                    {"from": "human", "value": "<image>\nDescribe the image."},
                    {"from": "gpt", "value": s.caption},
                ],
            }
        )
    for name, data in (extra_images or {}).items():
        (folder / "images" / f"{name}.jpg").write_bytes(data)
        records.append(
            {
                "id": name,
                "image": f"images/{name}.jpg",
                "conversations": [{"from": "human", "value": "<image>\nDescribe the image."}],
            }
        )
    path = folder / "sft.json"
    path.write_text(json.dumps(records))
    return str(path)


def rows(tables: Tables, name: str) -> int:
    return DeltaTable(tables.location(name)).to_pyarrow_table().num_rows


def test_import_and_generate_incremental(spark, make_cfg, tmp_path, tmp_path_factory):
    samples = make_samples(4, seed=41)
    sft = write_sft(tmp_path / "sft", samples)
    data = json.loads(open(sft).read())
    data.append(
        {"id": "gone", "image": "images/gone.jpg", "conversations": data[0]["conversations"]}
    )
    data.append({"id": "words", "conversations": [{"from": "human", "value": "no image"}]})
    (tmp_path / "sft" / "sft.json").write_text(json.dumps(data))
    cfg = make_cfg(
        [
            f"dpo.generate.model={tiny_llava_at(tmp_path_factory)}",
            "dpo.generate.responses_per_prompt=2",
            "dpo.generate.max_new_tokens=6",
            "dpo.generate.device=cpu",
        ]
    )
    cfg.dpo.generate.templates = {
        "short": "Give a short caption of the image.",
        "instruction": "{instruction}",
    }
    tables = Tables(spark, cfg)
    first = import_sft(spark, cfg, tables, sft)
    assert first.by_status == {"ok": 4, "missing_image": 1, "text_only": 1}
    pool = tables.read("sft_pool").toPandas().set_index("original_id")
    assert "gone.jpg" in pool.loc["gone", "error_message"]
    assert pool.loc["s0", "instruction"] == "Describe the image."
    assert len(pool.loc["s0", "image"]) > 100 and len(pool.loc["s0", "image_sha256"]) == 64
    again = import_sft(spark, cfg, tables, sft)
    assert again.rows_out == 1 and again.by_status["missing_image"] == 1  # only it is retried
    assert rows(tables, "sft_pool") == 5

    gen = run_stage("dpo_generate", spark, cfg, tables)
    assert gen.error is None and gen.rows_in == 8  # 4 images x 2 templates
    cands = tables.read("dpo_candidates").toPandas()
    assert len(cands) == 16 and cands.candidate_id.is_unique
    assert set(cands.status) <= {"success", "empty_response"} and (cands.status == "success").any()
    assert set(cands.template) == {"short", "instruction"}
    assert set(cands[cands.template == "instruction"].prompt) == {"Describe the image."}
    assert cands.model_id.nunique() == 1 and cands.model_id[0] == gen.notes["model_id"]
    assert (cands.temperature == 1.0).all() and np.allclose(cands.top_p, 0.9)
    per_unit = cands.groupby(["pool_id", "template"]).sample_index.apply(sorted)
    assert len(per_unit) == 8 and all(v == [0, 1] for v in per_unit)
    # a re-run finds nothing to do and the table keeps one row per response
    rerun = run_stage("dpo_generate", spark, cfg, tables)
    assert rerun.rows_in == 0 and rows(tables, "dpo_candidates") == 16


def _injected(samples, seed: int = 0) -> list[dict]:
    """Per image: two faithful answers and four with one injected hallucination each."""
    rng = random.Random(seed)
    out = []

    def other(options, current):
        return rng.choice([o for o in options if o != current])

    for s in samples:
        a = s.attrs
        pos = "middle" if a.position == "center" else a.position
        answers = {
            "faithful": f"a {a.color} {a.shape} on the {pos}.",
            "faithful_long": f"there is a {a.color} {a.shape} on the {pos} of the picture.",
            "wrong_color": f"a {other(COLORS, a.color)} {a.shape} on the {pos}.",
            "wrong_shape": f"a {a.color} {other(SHAPES, a.shape)} on the {pos}.",
            "wrong_position": f"a {a.color} {a.shape} on the "
            f"{other([p for p in POSITIONS if p != 'center'], a.position)}.",
            "absent_object": f"a {a.color} {a.shape} on the {pos} and a "
            f"{other(COLORS, a.color)} {other(SHAPES, a.shape)}.",
        }
        for i, (kind, text) in enumerate(answers.items()):
            out.append(
                {
                    "id": f"s{s.index}",
                    "response": text,
                    "template": "injected",
                    "model_id": kind,
                    "sample_index": i,
                }
            )
    return out


@pytest.fixture(scope="module")
def scored(spark, tmp_path_factory):
    """A pool of 24 generated scenes + 2 text documents, each with injected responses,
    scored by tiny-clip and selected with the default rules (the stages run once)."""
    base = tmp_path_factory.mktemp("dpo-scored")
    samples = make_samples(24, seed=4242)
    rng = random.Random(5)
    docs = {f"doc{i}": textheavy.jpeg(textheavy.render_document(rng)) for i in range(2)}
    sft = write_sft(base / "sft", samples, docs)
    cfg = load_config("local", [f"workdir={base / 'wd'}"])
    tables = Tables(spark, cfg)
    import_sft(spark, cfg, tables, sft)
    responses = _injected(samples)
    for name in docs:  # documents get "responses" too: their pairs must all go
        responses += [
            {
                "id": name,
                "response": t,
                "template": "injected",
                "model_id": "doc",
                "sample_index": i,
            }
            for i, t in enumerate(["a page of text.", "a red circle."])
        ]
    path = base / "responses.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in responses))
    imported = import_responses(spark, cfg, tables, str(path))
    results = {st: run_stage(st, spark, cfg, tables) for st in ("dpo_score", "dpo_select")}
    return cfg, tables, imported, results, str(path)


def _truth(tables) -> pd.DataFrame:
    cands = tables.read("dpo_candidates").toPandas()
    cands["faithful"] = cands.model_id.str.startswith("faithful")
    return cands


def test_score_select_and_pair_accuracy(spark, scored, capsys):
    cfg, tables, imported, results, path = scored
    assert imported.rows_out == 24 * 6 + 4 and imported.by_status == {"success": 148}
    score, select = results["dpo_score"], results["dpo_select"]
    assert score.error is None and score.rows_out == 148 and score.notes["text_heavy"] == 2
    heavy = tables.read("sft_pool").where(F.col("text_heavy")).select("original_id").collect()
    assert sorted(r[0] for r in heavy) == ["doc0", "doc1"]
    assert select.error is None and select.by_status["removed_text_heavy"] == 2
    assert select.rows_out == rows(tables, "dpo_pairs") > 0
    assert select.rows_in == 24 * 15 + 2 == sum(select.by_status.values())  # every pair counted

    cands = _truth(tables)
    truth = cands.set_index("candidate_id").faithful.to_dict()
    pairs = tables.read("dpo_pairs").toPandas()
    assert pairs.pair_id.is_unique and (pairs.margin > 0).all()
    assert (pairs.groupby("image_sha256").size() <= cfg.dpo.select.max_pairs_per_image).all()
    useful = pairs[pairs.chosen_id.map(truth) != pairs.rejected_id.map(truth)]
    kept_acc = (useful.chosen_id.map(truth)).mean()

    # the same responses, unfiltered: every pair with one faithful and one hallucinated answer
    scenes = cands[cands.model_id != "doc"].copy()
    scenes["score"] = scenes.clip_score
    informative = []
    for _, g in scenes.groupby("pool_id"):
        for p in sel_mod.select_pairs(g, SelectSettings(max_pairs_per_image=99), min_chosen=-9):
            if truth[p["chosen_id"]] != truth[p["rejected_id"]] and p["margin"] > 0:
                informative.append((p["chosen_id"], p["rejected_id"]))
    clip_acc = sum(truth[c] for c, _ in informative) / len(informative)
    baselines = {}
    for kind in ("random", "length"):
        got = [
            (c, r)
            for _, g in scenes.groupby("pool_id")
            for c, r in sel_mod.baseline_pairs(g, kind, seed=1)
            if truth[c] != truth[r]
        ]
        baselines[kind] = sum(truth[c] for c, _ in got) / len(got)
    by_kind = {}
    for kind in ("wrong_color", "wrong_shape", "wrong_position", "absent_object"):
        bad = set(scenes[scenes.model_id == kind].candidate_id)
        pk = [(c, r) for c, r in informative if r in bad or c in bad]
        by_kind[kind] = round(sum(truth[c] for c, _ in pk) / max(1, len(pk)), 3)
    print(
        f"\npair accuracy: clip_unfiltered={clip_acc:.3f} (n={len(informative)}) "
        f"clip_filtered={kept_acc:.3f} (n={len(useful)} of {len(pairs)} kept) "
        f"random={baselines['random']:.3f} length_only={baselines['length']:.3f} "
        f"by_hallucination={by_kind} rules={select.by_status}"
    )
    assert clip_acc >= 0.8
    assert kept_acc >= max(0.9, clip_acc)  # the rules keep the confident, clean pairs
    assert clip_acc > baselines["random"] + 0.25 and clip_acc > baselines["length"] + 0.15

    # idempotent: a second selection (nothing changed: skipped; forced: recomputed) and a
    # re-import leave the same rows
    before = sorted(pairs.pair_id)
    again = run_stage("dpo_select", spark, cfg, tables)
    assert again.rows_out == 0 and again.notes["skipped"] == "nothing changed since the last run"
    forced = run_stage("dpo_select", spark, cfg, tables, force=True)
    assert forced.rows_out == len(before)
    assert sorted(tables.read("dpo_pairs").toPandas().pair_id) == before
    assert import_responses(spark, cfg, tables, path).rows_out == 0
    assert run_stage("dpo_score", spark, cfg, tables).rows_in == 0


def test_dpo_score_rerun_with_nothing_to_do_needs_no_spark(scored):
    """A re-run on unchanged local tables answers from delta-rs (spark=None would raise),
    and a scorer that has not scored the responses yet does find work."""
    import copy

    from laion_spark.dpo import score as dpo_score

    cfg, tables, *_ = scored
    res = dpo_score.run(None, cfg, tables)
    assert res.rows_in == 0 and res.error is None and res.notes["text_checked"] == 0
    other = copy.deepcopy(cfg)
    other.dpo.score.aggregate = "min"  # another scorer_id: every response is pending for it
    ens = dpo_score.load_ensemble(dpo_score.worker_configs(other), "min")
    assert ens.scorer_id != res.notes["scorer_id"]
    assert dpo_score.idle_local(other, tables, ens) is None


@pytest.fixture(scope="module")
def exported(spark, scored, tmp_path_factory):
    from laion_spark.dpo.export import export_dpo

    cfg, tables, *_ = scored
    out = str(tmp_path_factory.mktemp("dpo-export") / "trl")
    return out, export_dpo(spark, cfg, tables, out)


def test_export_loads_with_datasets(scored, exported):
    import datasets
    from PIL import Image

    _, tables, *_ = scored
    out, n = exported
    assert n == rows(tables, "dpo_pairs")
    ds = datasets.load_dataset("parquet", data_dir=out, split="train")
    assert len(ds) == n
    assert {"images", "prompt", "chosen", "rejected"} <= set(ds.column_names)
    row = ds[0]
    assert isinstance(row["images"][0], Image.Image) and row["images"][0].size == (64, 64)
    assert row["prompt"][0]["role"] == "user"
    assert [c["type"] for c in row["prompt"][0]["content"]] == ["image", "text"]
    assert row["chosen"][0]["role"] == "assistant" and row["chosen"][0]["content"][0]["text"]
    pairs = tables.read("dpo_pairs").toPandas().set_index("pair_id")
    assert row["chosen"][0]["content"][0]["text"] == pairs.loc[row["pair_id"], "chosen"]


def test_export_format_dpo_through_the_cli(scored, exported, tmp_path):
    """`laion-spark export --format dpo --to DIR` writes the same pairs as dpo-export."""
    import datasets

    from laion_spark.cli import main as cli

    cfg, *_ = scored
    out, n = exported
    to = str(tmp_path / "via-export")
    assert cli(["export", "--format", "dpo", "--to", to, "--set", f"workdir={cfg.workdir}"]) == 0
    a = datasets.load_dataset("parquet", data_dir=to, split="train")
    b = datasets.load_dataset("parquet", data_dir=out, split="train")
    assert len(a) == n and sorted(a["pair_id"]) == sorted(b["pair_id"])


@pytest.mark.slow
def test_trl_dpo_trainer_takes_one_step(scored, exported, tmp_path, tmp_path_factory):
    import datasets
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOConfig, DPOTrainer

    out, _ = exported
    model_dir = tiny_llava_at(tmp_path_factory)
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    ds = datasets.load_dataset("parquet", data_dir=out, split="train")
    before = {k: v.clone() for k, v in model.named_parameters() if v.requires_grad}
    args = DPOConfig(
        output_dir=str(tmp_path / "dpo"),
        max_steps=1,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=processor)
    result = trainer.train()
    assert result.global_step == 1
    changed = [
        k for k, v in model.named_parameters() if k in before and not torch.equal(v, before[k])
    ]
    assert changed, "one DPO step changed no weight"
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and logged[0]["loss"] == pytest.approx(0.6931, abs=0.05)  # log(2) at step one


def _pool_and_generate(spark, make_cfg, workdir, llava: str, local: bool):
    """The pool from seeded images (one failed, one taken down, one without a caption)
    and dpo_generate over it, through Spark or in this process."""
    from seeding import seed_rows

    cfg = make_cfg(
        [
            f"dpo.generate.model={llava}",
            "dpo.generate.responses_per_prompt=2",
            "dpo.generate.max_new_tokens=4",
            "dpo.generate.device=cpu",
            "dpo.pool.from_images=true",
            f"dpo.generate.local_max_rows={5000 if local else 0}",
        ],
        workdir=workdir,
    )
    cfg.dpo.generate.templates = {"short": "Caption it.", "instruction": "{instruction}"}
    tables = Tables(spark, cfg)
    samples = make_samples(5, seed=43)
    ids = [f"{i:02x}" * 16 for i in range(1, 7)]
    urls = [f"http://127.0.0.1:9/{i}.jpg" for i in range(6)]
    seed_rows(
        tables,
        "images",
        "sample_id url status image sha256",
        [(ids[i], urls[i], "success", s.jpeg(48), None) for i, s in enumerate(samples)]
        + [(ids[5], urls[5], "http_error", None, None)],
    )
    seed_rows(
        tables,
        "candidates",
        "sample_id url text",
        [(ids[i], urls[i], s.caption) for i, s in enumerate(samples) if i != 3],
    )
    seed_rows(tables, "takedowns", "request_id kind value", [("r1", "url", urls[4])])
    return run_stage("dpo_generate", spark, cfg, tables), tables


def test_generate_in_process_equals_spark(spark, make_cfg, tmp_path, tmp_path_factory):
    llava = tiny_llava_at(tmp_path_factory)
    runs = {
        way: _pool_and_generate(spark, make_cfg, tmp_path / way, llava, way == "local")
        for way in ("spark", "local")
    }
    (sres, st), (lres, lt) = runs["spark"], runs["local"]
    assert (sres.notes["engine"], lres.notes["engine"]) == ("spark", "local")
    for res in (sres, lres):
        # 4 of the 6 images (one failed download, one taken down) x 2 templates, 2 responses
        assert res.error is None and res.notes["pool_added"] == 4 and res.rows_in == 8
        assert res.rows_out == 16 and res.notes["model_id"] == sres.notes["model_id"]

    def pool(tables):
        cols = "pool_id source original_id sample_id image_ref image image_sha256 instruction"
        df = DeltaTable(tables.location("sft_pool")).to_pandas()
        return (
            df[[*cols.split(), "reference", "status"]].sort_values("pool_id").reset_index(drop=True)
        )

    pd.testing.assert_frame_equal(pool(st), pool(lt))
    assert pool(lt).reference.isna().sum() == 1  # the image without a caption

    def cands(tables):
        df = DeltaTable(tables.location("dpo_candidates")).to_pandas()
        assert set(df.status) <= {"success", "empty_response"}  # (which: the sampled text)
        keep = "candidate_id pool_id template prompt sample_index model_id source".split()
        return df[keep].sort_values("candidate_id").reset_index(drop=True)

    pd.testing.assert_frame_equal(cands(st), cands(lt))
    # a re-run on either path adds nothing, starts no generation
    again = run_stage("dpo_generate", spark, lt.cfg, lt)
    assert (
        again.rows_in == 0 and again.notes["pool_added"] == 0 and again.notes["engine"] == "local"
    )
    assert len(cands(lt)) == 16

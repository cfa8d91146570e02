"""Score stage on a small embeddings table written by the test: one pass, incremental, honest nulls."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from pyspark.sql import functions as F

from laion_spark.score.stage import run
from laion_spark.score.train import train_head
from laion_spark.score.zeroshot import PromptEmbeddings

MODEL = "test-clip@0123456789ab"
D = 16  # small width: the generic head shape, few rows suffice
N = 500


def append(tables, df, name):
    """Seed a table quickly (a plain Delta append; the stages themselves MERGE)."""
    tables.ensure(name)
    df.write.format("delta").mode("append").option("mergeSchema", "true").save(
        tables.location(name)
    )


def make_embeddings(n: int, seed: int = 0):
    """n L2-normalised embeddings; label = side of a hidden direction (with a margin)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=D)
    w /= np.linalg.norm(w)
    x = rng.normal(size=(3 * n, D))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    s = x @ w
    keep = np.abs(s) > 0.05
    return x[keep][:n].astype(np.float32), s[keep][:n], w


def write_tables(spark, tables, n: int = N, bad_rows: int = 2):
    x, s, w = make_embeddings(n)
    ids = [f"{i:032x}" for i in range(n)]
    captions = ["a red circle on the left" if i % 10 else "what a stupid idiot" for i in range(n)]
    rows = [
        (
            ids[i],
            MODEL,
            x[i].tolist(),
            x[(i + 1) % n].tolist(),
            float(x[i] @ x[(i + 1) % n]),
            "success",
        )
        for i in range(n)
    ]
    # bad embeddings: wrong length and NaN (a broken upstream row gets a flag, not a crash)
    rows += [
        (f"bad{i:029x}", MODEL, [0.1] * (D // 2 if i == 0 else D), None, None, "success")
        for i in range(bad_rows)
    ]
    rows[-1][2][3] = float("nan")
    # another model's rows must not be scored for MODEL
    rows += [(ids[0], "other@000000000000", x[0].tolist(), None, None, "success")]
    emb = spark.createDataFrame(
        rows,
        "sample_id string, model_id string, image_embedding array<float>, "
        "text_embedding array<float>, similarity float, status string",
    )
    append(tables, emb, "embeddings")
    cands = spark.createDataFrame(
        [(ids[i], f"http://127.0.0.1/{i}.jpg", captions[i]) for i in range(n)],
        "sample_id string, url string, text string",
    )
    append(tables, cands, "candidates")
    labels = pd.DataFrame({"sample_id": ids, "label": (s > 0).astype(int)})
    return ids, s, labels


@pytest.fixture()
def scored_env(spark, make_cfg, tmp_path):
    from laion_spark.tables import Tables

    cfg0 = make_cfg()
    tables = Tables(spark, cfg0)
    ids, s, labels = write_tables(spark, tables)
    return tables, ids, s, labels


def test_train_head_from_table_then_score_one_pass(spark, make_cfg, scored_env, tmp_path):
    from laion_spark.tables import Tables

    tables, ids, s, labels = scored_env
    cfg0 = make_cfg()
    nsfw = str(tmp_path / "nsfw.pt")
    m = train_head(spark, cfg0, tables, "nsfw", labels, nsfw, model_id=MODEL, epochs=60)
    assert m["accuracy"] >= 0.95 and m["model_id"] == MODEL, m
    aest_labels = labels.assign(label=5 + 10 * s)
    aest = str(tmp_path / "aesthetic.pt")
    assert (
        train_head(spark, cfg0, tables, "aesthetic", aest_labels, aest, model_id=MODEL)["accuracy"]
        >= 0.95
    )

    cfg = make_cfg([f"score.nsfw_head={nsfw}", f"score.aesthetic_head={aest}"])
    tables = Tables(spark, cfg)
    # zero-shot prompts in the test model's space: unsafe prompts along the hidden direction
    _, _, w = make_embeddings(1)
    eye = np.eye(D, dtype=np.float32)
    pe = PromptEmbeddings(
        neutral=np.stack([-w, -w]).astype(np.float32),
        unsafe=np.stack([w, w]).astype(np.float32),
        underage=eye[[5]],
        adult=eye[[6, 7]],
        animal=eye[[8]],
        not_animal=eye[[9]],
    )
    res = run(spark, cfg, tables, model_id=MODEL, prompt_embeddings=pe)
    n = len(ids)
    assert res.rows_in == n + 2
    assert res.by_status["scored"] == n and res.by_status["bad_embedding"] == 2
    assert res.by_status["toxic"] == n // 10  # the word-list scorer saw every tenth caption

    sc = tables.read("scores").toPandas().set_index("sample_id")
    assert len(sc) == n + 2 and set(sc["model_id"]) == {MODEL}
    good = sc.loc[ids]
    agree = ((good["punsafe"] > 0.5).to_numpy() == (s > 0)).mean()
    assert agree >= 0.95
    assert good["aesthetic"].notna().all()
    assert good["pwatermark"].isna().all()  # no watermark model configured: null, not 0
    row = good.iloc[0]
    assert row["score_models"]["watermark"].startswith("absent")
    assert row["score_models"]["nsfw"].startswith("nsfw:nsfw.pt@")
    assert row["score_models"]["toxicity"].startswith("wordlist:")
    assert row["score_models"]["zero_shot"].startswith(f"zero-shot:{MODEL}:prompts@")
    # zero-shot: the unsafe side of the hidden direction is NSFW, the other UNLIKELY
    assert set(good["nsfw_tag"]) <= {"UNLIKELY", "UNSURE", "NSFW"}
    assert (good.loc[s > 0, "nsfw_tag"] == "NSFW").all()
    assert (good.loc[s < 0, "nsfw_tag"] == "UNLIKELY").all()
    flagged = good["flags"].map(lambda f: "nsfw" in list(f))
    assert (flagged == (good["punsafe"] > 0.5)).all()
    # broken embeddings: flagged, image scores null
    bad = sc.drop(index=ids)
    assert all("bad_embedding" in list(f) for f in bad["flags"])
    assert bad["punsafe"].isna().all() and bad["nsfw_tag"].isna().all()

    # re-run: nothing pending, nothing rewritten
    version = tables.delta("scores").history(1).collect()[0]["version"]
    again = run(spark, cfg, tables, model_id=MODEL, prompt_embeddings=pe)
    assert again.rows_in == 0
    assert tables.delta("scores").history(1).collect()[0]["version"] == version
    assert tables.read("scores").count() == n + 2


def test_nothing_configured_leaves_nulls_and_records_absent(spark, make_cfg, scored_env):
    from laion_spark.tables import Tables

    cfg = make_cfg(["score.zero_shot=false", "score.word_list_toxicity=false"])
    tables = Tables(spark, cfg)
    res = run(spark, cfg, tables, model_id=MODEL, limit=50)
    assert res.rows_in == 50 and "absent" in res.notes
    sc = tables.read("scores").toPandas()
    for c in ("punsafe", "pwatermark", "toxicity", "aesthetic", "nsfw_tag"):
        assert sc[c].isna().all(), c
    models = sc["score_models"].iloc[0]
    assert {k for k, v in models.items() if v.startswith("absent")} == {
        "nsfw",
        "watermark",
        "aesthetic",
        "toxicity",
        "zero_shot",
    }
    # incremental: the next run scores only the rest
    assert run(spark, cfg, tables, model_id=MODEL).rows_in == N + 2 - 50
    # `scores` is keyed by sample_id: another model's run replaces that sample's row
    # (an update, not a second row, and not an insert that leaves it pending forever)
    ids = scored_env[1]
    assert run(spark, cfg, tables, model_id="other@000000000000").rows_in == 1
    sc = tables.read("scores").toPandas().set_index("sample_id")
    assert len(sc) == N + 2 and sc.loc[ids[0], "model_id"] == "other@000000000000"
    assert run(spark, cfg, tables, model_id="other@000000000000").rows_in == 0


def test_watermark_image_model_reads_image_bytes(spark, make_cfg, tmp_path):
    import timm
    from PIL import Image

    from laion_spark.tables import Tables

    model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=2)
    p = tmp_path / "wm.pt"
    torch.save(model.state_dict(), p)
    cfg = make_cfg(
        [
            f"score.watermark_image_model={p}",
            "score.watermark_image_arch=mobilenetv3_small_050",
            "score.watermark_image_size=32",
            "score.zero_shot=false",
        ]
    )
    tables = Tables(spark, cfg)
    x, _, _ = make_embeddings(6)
    ids = [f"w{i:031x}" for i in range(6)]
    append(
        tables,
        spark.createDataFrame(
            [(ids[i], MODEL, x[i].tolist()) for i in range(6)],
            "sample_id string, model_id string, image_embedding array<float>",
        ),
        "embeddings",
    )

    def jpeg(i):
        b = io.BytesIO()
        Image.new("RGB", (20, 20), (40 * i, 10, 10)).save(b, "JPEG")
        return b.getvalue()

    imgs = [(ids[i], "success", jpeg(i)) for i in range(4)] + [(ids[4], "success", b"garbage")]
    append(
        tables,
        spark.createDataFrame(imgs, "sample_id string, status string, image binary"),
        "images",
    )
    res = run(spark, cfg, tables, model_id=MODEL)
    assert res.rows_in == 6
    sc = tables.read("scores").toPandas().set_index("sample_id")
    assert sc.loc[ids[:4], "pwatermark"].between(0, 1).all()
    assert sc.loc[ids[4:], "pwatermark"].isna().all()  # undecodable / missing image: null
    assert sc.loc[ids[0], "score_models"]["watermark"].startswith(
        "watermark-image:mobilenetv3_small_050:"
    )
    assert sc.loc[ids[5], "score_models"]["watermark"] == "absent: no image"
    assert res.notes.get("engine") != "local"  # the image classifier's work is Spark's
    # nothing left: the re-run answers from the tables with delta-rs (spark=None would raise)
    again = run(None, cfg, tables, model_id=MODEL)
    assert again.rows_in == 0 and again.notes["pending"] == 0 and again.notes["engine"] == "local"


def test_head_of_wrong_width_fails_fast_naming_the_key(spark, make_cfg, tmp_path):
    from laion_spark.models.heads import new_head, save_head
    from laion_spark.tables import Tables

    p = str(tmp_path / "n768.pt")
    save_head(p, "nsfw", new_head("nsfw", 768))
    cfg = make_cfg([f"score.nsfw_head={p}", "score.zero_shot=false"])
    tables = Tables(spark, cfg)
    x, _, _ = make_embeddings(3)
    append(
        tables,
        spark.createDataFrame(
            [(f"{i}", MODEL, x[i].tolist()) for i in range(3)],
            "sample_id string, model_id string, image_embedding array<float>",
        ),
        "embeddings",
    )
    with pytest.raises(ValueError, match="score.nsfw_head: head expects 768-d"):
        run(spark, cfg, tables, model_id=MODEL)
    assert not tables.exists("scores") or tables.read("scores").where(F.lit(True)).count() == 0


def test_local_path_writes_what_the_spark_path_writes(spark, make_cfg, tmp_path):
    """Small local runs score in the driver (delta-rs reads, one delta-rs MERGE); the same
    inputs through Spark's job give the same `scores` rows, and both re-runs are no-ops."""
    from laion_spark.models.heads import new_head, save_head
    from laion_spark.tables import Tables

    heads = []
    for kind in ("nsfw", "watermark", "aesthetic"):
        torch.manual_seed(len(heads))
        heads.append(
            f"score.{kind}_head=" + save_head(str(tmp_path / f"{kind}.pt"), kind, new_head(kind, D))
        )
    rng = np.random.default_rng(1)

    def unit(k: int) -> np.ndarray:
        p = rng.normal(size=(k, D)).astype(np.float32)
        return p / np.linalg.norm(p, axis=1, keepdims=True)

    pe = PromptEmbeddings(unit(3), unit(2), unit(1), unit(2), unit(1), unit(1))
    got = {}
    for engine, limit in (("spark", 0), ("local", 100_000)):
        cfg = make_cfg([*heads, f"score.local_max_rows={limit}"], workdir=tmp_path / engine)
        tables = Tables(spark, cfg)
        ids, _, _ = write_tables(spark, tables, n=60)
        res = run(spark, cfg, tables, model_id=MODEL, prompt_embeddings=pe)
        assert res.notes.get("engine", "spark") == engine, res.notes
        assert res.rows_in == 62 and res.by_status["bad_embedding"] == 2
        again = run(spark, cfg, tables, model_id=MODEL, prompt_embeddings=pe)
        assert again.rows_in == 0
        # three new embeddings: only they are pending (a scan that keeps some rows per batch)
        x = np.eye(D, dtype=np.float32)[:3]  # the same rows for both engines
        new = [(f"new{i:029x}", MODEL, x[i].tolist(), None, None, "success") for i in range(3)]
        append(
            tables,
            spark.createDataFrame(
                new,
                "sample_id string, model_id string, "
                "image_embedding array<float>, text_embedding array<float>, similarity float, "
                "status string",
            ),
            "embeddings",
        )
        more = run(spark, cfg, tables, model_id=MODEL, prompt_embeddings=pe)
        assert more.rows_in == 3 and more.notes.get("engine", "spark") == engine
        # read back by Spark and by delta-rs alike
        sc = tables.read("scores").toPandas().sort_values("sample_id").reset_index(drop=True)
        assert len(sc) == 65 and sc["sample_id"].is_unique
        got[engine] = (res.by_status, sc)
    (st_a, a), (st_b, b) = got["spark"], got["local"]
    assert st_a == st_b
    for col in ("sample_id", "model_id", "nsfw_tag"):
        assert a[col].tolist() == b[col].tolist(), col
    for col in ("punsafe", "pwatermark", "toxicity", "aesthetic"):
        assert np.allclose(a[col].to_numpy(float), b[col].to_numpy(float), equal_nan=True), col
    assert [sorted(f) for f in a["flags"]] == [sorted(f) for f in b["flags"]]
    assert [dict(m) for m in a["score_models"]] == [dict(m) for m in b["score_models"]]
    assert b["scored_at"].notna().all()

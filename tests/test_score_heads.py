"""Score heads: LAION shapes, file round trips, Keras conversion, training to >= 95%."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from laion_spark.models.heads import (
    Head,
    MLPHead,
    convert_keras_npz,
    load_head,
    new_head,
    save_head,
)
from laion_spark.score.train import train_arrays


def hidden_direction_data(n: int, dim: int, seed: int, margin: float = 0.05):
    """L2-normalised embeddings labelled by the side of a hidden hyperplane they fall on."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=dim)
    w /= np.linalg.norm(w)
    x = rng.normal(size=(n * 2, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    s = x @ w
    keep = np.abs(s) > margin / np.sqrt(dim)  # a thin band of ambiguous samples left out
    x, s = x[keep][:n], s[keep][:n]
    return x.astype(np.float32), s, [f"s{i:05d}" for i in range(len(x))]


@pytest.mark.parametrize(
    "dim,widths", [(768, [768, 64, 512, 256, 1]), (512, [512, 32, 32, 1]), (64, [64, 64, 32, 1])]
)
def test_nsfw_head_has_laion_shape(dim, widths):
    m = new_head("nsfw", dim)
    lin = m.linears()
    assert [lin[0].in_features] + [x.out_features for x in lin] == widths
    out = m(torch.randn(5, dim))
    assert out.shape == (5,) and bool(((out >= 0) & (out <= 1)).all())


def test_aesthetic_head_is_linear():
    m = new_head("aesthetic", 768)
    assert len(m.linears()) == 1 and m.output == "linear"


@pytest.mark.parametrize("kind", ["nsfw", "watermark", "toxicity"])
def test_binary_heads_reach_95_percent_held_out(kind, tmp_path):
    x, s, ids = hidden_direction_data(2000, 64, seed=hash(kind) % 1000)
    y = (s > 0).astype(np.float32)
    out = tmp_path / f"{kind}.pt"
    metrics = train_arrays(
        kind, x, y, ids, str(out), input="text" if kind == "toxicity" else "image", epochs=60
    )
    assert metrics["n_test"] > 200
    assert metrics["accuracy"] >= 0.95, metrics
    head = load_head(str(out), kind)
    assert head.input == ("text" if kind == "toxicity" else "image")
    assert head.metrics["accuracy"] == pytest.approx(metrics["accuracy"])
    # the saved head predicts what was measured
    p = head.predict(x)
    assert ((p > 0.5) == (y > 0.5)).mean() >= 0.95


def test_aesthetic_head_regresses_hidden_score(tmp_path):
    x, s, ids = hidden_direction_data(2000, 64, seed=7)
    y = (5.0 + 8.0 * s).astype(np.float32)  # an aesthetic score around 5
    m = train_arrays("aesthetic", x, y, ids, str(tmp_path / "a.pt"), epochs=60)
    assert m["accuracy"] >= 0.95 and m["r2"] > 0.9, m


def test_raw_laion_aesthetic_state_dicts_load(tmp_path):
    lin = torch.nn.Linear(768, 1)
    p = tmp_path / "sa_0_4_vit_l_14_linear.pth"
    torch.save(lin.state_dict(), p)
    h = load_head(str(p), "aesthetic")
    x = torch.randn(3, 768)
    assert np.allclose(h.predict(x.numpy()), lin(x).squeeze(-1).detach().numpy(), atol=1e-5)
    # v2 "improved aesthetic predictor": Linear stack with Dropouts, no activations
    seq = torch.nn.Sequential(
        torch.nn.Linear(768, 16),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(16, 8),
        torch.nn.Linear(8, 1),
    )
    sd = {f"layers.{k}": v for k, v in seq.state_dict().items()}
    p2 = tmp_path / "v2.pth"
    torch.save(sd, p2)
    h2 = load_head(str(p2), "aesthetic")
    assert np.allclose(h2.predict(x.numpy()), seq.eval()(x).squeeze(-1).detach().numpy(), atol=1e-5)


def test_keras_weights_convert_to_same_function(tmp_path):
    """get_weights() order of LAION's autokeras B/32 detector -> identical outputs."""
    rng = np.random.default_rng(0)
    mean, var = rng.normal(size=512) * 0.01, rng.uniform(0.5, 2.0, size=512) * 1e-3
    k = [rng.normal(size=s) * 0.1 for s in [(512, 32), (32, 32), (32, 1)]]
    b = [rng.normal(size=s[1]) * 0.1 for s in [(512, 32), (32, 32), (32, 1)]]
    arrays = [mean, var, np.array(1000)] + [a for pair in zip(k, b, strict=True) for a in pair]
    npz = tmp_path / "keras.npz"
    np.savez(npz, *arrays)
    out = convert_keras_npz(str(npz), str(tmp_path / "nsfw_b32.pt"))
    x = rng.normal(size=(4, 512)).astype(np.float32)
    # the Keras forward pass, by hand
    h = (x - mean) / np.maximum(np.sqrt(var), 1e-7)
    for i in range(3):
        h = h @ k[i] + b[i]
        if i < 2:
            h = np.maximum(h, 0)
    expected = 1 / (1 + np.exp(-h[:, 0]))
    got = load_head(out, "nsfw").predict(x)
    assert np.allclose(got, expected, atol=1e-4)


def test_wrong_kind_and_missing_file_fail_clearly(tmp_path):
    p = tmp_path / "n.pt"
    save_head(str(p), "nsfw", new_head("nsfw", 64))
    with pytest.raises(ValueError, match="holds a 'nsfw' head"):
        load_head(str(p), "aesthetic")
    with pytest.raises(FileNotFoundError):
        load_head(str(tmp_path / "nope.pt"), "nsfw")
    with pytest.raises(ValueError, match="unknown head kind"):
        new_head("cuteness", 64)


def test_head_predict_empty_and_batches():
    h = Head("nsfw", MLPHead(8, [4]))
    assert h.predict(np.zeros((0, 8), np.float32)).shape == (0,)
    x = np.random.default_rng(1).normal(size=(10, 8)).astype(np.float32)
    assert np.allclose(h.predict(x, batch=3), h.predict(x), atol=1e-6)


def test_watermark_image_model_laion_head(tmp_path):
    """A timm classifier whose head is LAION's Linear-ReLU-Linear loads and scores bytes."""
    import timm
    from PIL import Image

    from laion_spark.models.watermark import load_watermark_model

    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=2)
    feat = model.classifier.in_features
    model.classifier = torch.nn.Sequential(
        torch.nn.Linear(feat, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)
    )
    p = tmp_path / "watermark_model_v1.pt"
    torch.save(model.state_dict(), p)
    wm = load_watermark_model(str(p), "efficientnet_b0", image_size=64)
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, "JPEG")
    probs = wm.predict_bytes([buf.getvalue(), b"not an image", None])
    assert 0.0 <= probs[0] <= 1.0
    assert np.isnan(probs[1]) and np.isnan(probs[2])
    assert wm.model_ref.startswith("watermark-image:efficientnet_b0:watermark_model_v1.pt@")


def test_arrow_matrix_matches_the_row_by_row_matrix():
    """The stage's Arrow path gives the vectors and valid-row mask the pandas path gives: an
    even column is reshaped as it lies; NaN rows, short rows and null rows are invalid."""
    import pandas as pd
    import pyarrow as pa

    from laion_spark.score.scoring import _matrix, arrow_matrix

    rng = np.random.default_rng(0)
    even = [rng.normal(size=4).astype(np.float32) for _ in range(5)]
    nan = [v.copy() for v in even]
    nan[2][1] = np.nan
    cases = {"even": even, "nan": nan, "short": [*even[:3], even[3][:2], even[4]]}
    cases["null"] = [*even[:2], None, *even[3:]]
    for name, rows in cases.items():
        col = pa.array([None if r is None else r.tolist() for r in rows], pa.list_(pa.float32()))
        x, ok = arrow_matrix(pa.chunked_array([col.slice(0, 2), col.slice(2)]))
        x0, ok0 = _matrix(pd.Series(rows, dtype=object), None)
        assert ok.tolist() == ok0.tolist(), name
        assert np.array_equal(x, x0), name
        assert (ok.all() if name == "even" else not ok.all()), name

"""load_clip: tiny-clip quality, local checkpoints through the same path, errors, config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from laion_spark.demo.synthetic import make_samples
from laion_spark.embed.settings import EmbedSettings
from laion_spark.models import tiny_clip as tiny
from laion_spark.models.clip import ImageDecodeError, load_clip
from laion_spark.settings import ConfigError


@pytest.fixture(scope="module")
def clip():
    return load_clip(EmbedSettings())


def test_tiny_clip_ranks_true_caption_first(clip):
    assert clip.model_id.startswith("tiny-clip@") and clip.dim == 64
    assert clip.device == "cpu"
    # held out: the training and calibration seeds differ from these
    samples = make_samples(100, seed=31)
    img = clip.encode_images([s.jpeg(64) for s in samples])
    txt = clip.encode_text([s.caption for s in samples])
    assert img.dtype == np.float32 and img.shape == (100, 64)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    sim = img @ txt.T
    top1 = float((sim.argmax(1) == np.arange(len(samples))).mean())
    # a candidate caption describing the same colour+shape+position also counts as right
    attrs = [(s.attrs.color, s.attrs.shape, s.attrs.position) for s in samples]
    top1_attr = float(np.mean([attrs[j] == attrs[i] for i, j in enumerate(sim.argmax(1))]))
    print(f"tiny-clip image->text top-1 among 100: {top1:.2f} (same attributes: {top1_attr:.2f})")
    assert top1 >= 0.5 and top1_attr >= 0.6


def test_tiny_clip_separates_matched_from_mismatched(clip):
    samples = make_samples(200, seed=32, mismatch_rate=0.5)
    img = clip.encode_images([s.jpeg(64) for s in samples])
    txt = clip.encode_text([s.caption for s in samples])
    sim = (img * txt).sum(1)
    bad = np.array([s.mismatched for s in samples])
    gap = sim[~bad].mean() - sim[bad].mean()
    print(f"cosine matched {sim[~bad].mean():.3f} mismatched {sim[bad].mean():.3f}")
    assert gap > 0.2
    thr = clip.thresholds["en"]
    assert ((sim >= thr) == ~bad).mean() >= 0.85  # the shipped threshold separates them


def test_checkpoint_meta_is_cached_with_version():
    path = Path(tiny.ensure_tiny_clip())
    assert tiny.VERSION in str(path.parent) and path.is_file()
    meta = json.loads(Path(str(path) + ".json").read_text())
    assert meta["version"] == tiny.VERSION and "threshold" in meta["eval"]
    assert tiny.ensure_tiny_clip() == str(path)  # cached: no retraining


def test_first_use_trains_logs_and_caches_in_an_empty_cache(tmp_path, monkeypatch, caplog):
    # the path a fresh machine takes (the suite's own cache is warm): a few steps, not 600
    monkeypatch.setenv("LAION_SPARK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tiny, "STEPS", 3)
    monkeypatch.setattr(tiny, "TRAIN_SAMPLES", 64)
    with caplog.at_level("INFO", logger=tiny.log.name):
        path = Path(tiny.ensure_tiny_clip())
    assert path.is_relative_to(tmp_path / "cache") and path.is_file()
    meta = json.loads(Path(str(path) + ".json").read_text())
    assert meta["train"]["steps"] == 3 and -1 <= meta["eval"]["threshold"] <= 1
    said = [r.getMessage() for r in caplog.records]
    assert any("step 0/3" in m for m in said) and any("trained in" in m for m in said)


def test_local_checkpoint_file_and_dir_load_through_the_same_code(tmp_path, clip):
    import open_clip
    import torch

    tiny.register()
    torch.manual_seed(123)
    model = open_clip.create_model("tiny-clip", pretrained=None).eval()
    f = tmp_path / "random.pt"
    torch.save(model.state_dict(), f)
    d = tmp_path / "ckptdir"
    d.mkdir()
    torch.save({"state_dict": model.state_dict()}, d / "open_clip_pytorch_model.bin")

    a = load_clip(EmbedSettings(model="tiny-clip", pretrained=str(f)))
    b = load_clip(EmbedSettings(model="tiny-clip", pretrained=str(d)))
    assert a.model_id == b.model_id != clip.model_id  # id = architecture + weights digest
    jpeg = make_samples(3, seed=5)[0].jpeg(64)
    with torch.inference_mode():
        want_t = model.encode_text(a.tokenizer(["a red circle"]))
        want_i = model.encode_image(a.decode(jpeg)[None])
    want_t = (want_t / want_t.norm(dim=-1, keepdim=True)).numpy()
    want_i = (want_i / want_i.norm(dim=-1, keepdim=True)).numpy()
    np.testing.assert_allclose(a.encode_text(["a red circle"]), want_t, atol=1e-5)
    np.testing.assert_allclose(b.encode_images([jpeg]), want_i, atol=1e-5)
    # no sidecar metadata -> LAION's thresholds
    assert a.thresholds == {"en": 0.28, "multi": 0.26}


def test_errors_name_the_problem(tmp_path, clip):
    with pytest.raises(ConfigError, match="embed.pretrained"):
        load_clip(EmbedSettings(model="ViT-B-32", pretrained=None))
    with pytest.raises(ConfigError, match="does not exist"):
        load_clip(EmbedSettings(model="tiny-clip", pretrained=str(tmp_path / "nope.pt")))
    with pytest.raises(ImageDecodeError, match="cannot decode") as bad:
        clip.encode_images([b"definitely not an image"])
    # what the bytes are, in words: never Pillow's repr of a BytesIO object
    assert "text starting 'definitely not a'" in str(bad.value) and "0x" not in str(bad.value)
    with pytest.raises(ImageDecodeError, match="empty"):
        clip.decode(b"")


def test_too_many_pixels_refused():
    import io

    from PIL import Image

    small = load_clip(EmbedSettings(max_image_pixels=1000))
    buf = io.BytesIO()
    Image.new("RGB", (100, 100)).save(buf, format="PNG")
    with pytest.raises(ImageDecodeError, match="too large"):
        small.decode(buf.getvalue())


@pytest.mark.parametrize(
    "override,key",
    [
        ("embed.device=tpu", "embed.device"),
        ("embed.precision=int4", "embed.precision"),
        ("embed.batch_size=0", "embed.batch_size"),
        ("curate.clip_thresholds.en=2", "curate.clip_thresholds.en"),
    ],
)
def test_bad_config_fails_fast(override, key):
    from laion_spark.config import load_config

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("local", [override])


@pytest.mark.gpu
def test_gpu_fp16_matches_cpu(clip):
    import torch

    assert torch.cuda.is_available()
    g = load_clip(EmbedSettings(device="cuda", precision="fp16"))
    jpegs = [s.jpeg(64) for s in make_samples(8, seed=3)]
    np.testing.assert_allclose(g.encode_images(jpegs), clip.encode_images(jpegs), atol=2e-2)


def test_device_decode_matches_the_pil_path(clip):
    """JPEGs decoded where the model runs (torchvision's decode_jpeg; nvJPEG on a GPU, here
    libjpeg on the CPU) embed like the PIL path; PNG, corrupt and huge images keep their
    CPU-path outcome."""
    import io

    from PIL import Image

    from laion_spark.demo.synthetic import make_samples
    from laion_spark.models.device_decode import decode_on_device

    samples = make_samples(12, seed=3)
    jpegs = [s.jpeg(size=48 + 8 * (i % 4)) for i, s in enumerate(samples)]
    png = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(png, format="PNG")
    small = load_clip(EmbedSettings(max_image_pixels=48 * 48))
    got = decode_on_device(clip, [*jpegs, png.getvalue(), b"\xff\xd8 broken", b""])
    want = [clip.decode(b) for b in jpegs + [png.getvalue()]]
    a = clip.encode_image_tensor(__import__("torch").stack(got[:13]))
    b = clip.encode_image_tensor(__import__("torch").stack(want))
    assert ((a * b).sum(1) > 0.99).all()
    assert isinstance(got[13], ImageDecodeError) and "cannot decode" in str(got[13])
    assert isinstance(got[14], ImageDecodeError) and "empty" in str(got[14])
    huge = decode_on_device(small, [jpegs[1]])[0]
    assert isinstance(huge, ImageDecodeError) and "too large" in str(huge)


def test_registering_tiny_clip_leaves_no_temporary_directory(tmp_path):
    """Every process that loads tiny-clip registers its config with open_clip; that used to
    leave one `laion_spark_cfg_*` directory in /tmp per process (416 after a day's work)."""
    import os
    import subprocess
    import sys

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    code = (
        "from laion_spark.models.tiny_clip import register; register(); import open_clip;"
        "assert 'tiny-clip' in open_clip.list_models()"
    )
    env = dict(os.environ, TMPDIR=str(scratch))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert not list(scratch.glob("laion_spark*"))  # (torch keeps its own cache there)

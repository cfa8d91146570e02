"""Search service end to end: tiny-clip embeddings -> index -> HTTP API -> real headless Chromium."""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
import urllib.error
import urllib.request

import numpy as np
import pytest

from laion_spark.demo.synthetic import make_samples
from laion_spark.ids import sample_id
from laion_spark.index.merge import merge_index
from laion_spark.index.search import Searcher
from laion_spark.index.stage import run
from laion_spark.models.clip import load_clip
from laion_spark.serve.app import start_background
from laion_spark.tables import Tables


def _get(url: str):
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.status, r.headers.get("Content-Type"), r.read()


def _post(url: str, body: bytes, ctype: str):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture()
def service(spark, make_cfg):
    cfg = make_cfg(["index.heldout_queries=10", "index.partitions=2"])
    tables = Tables(spark, cfg)
    clip = load_clip(cfg.embed, device="cpu")
    samples = make_samples(40, seed=5)
    jpegs = [s.jpeg(64) for s in samples]
    img = clip.encode_images(jpegs)
    txt = clip.encode_text([s.caption for s in samples])
    urls = [f"http://127.0.0.1:9/s/{s.index}.jpg" for s in samples]
    sids = [sample_id(u, s.caption) for u, s in zip(urls, samples, strict=True)]
    rows = [
        (sid, clip.model_id, img[i].tolist(), txt[i].tolist(), float(img[i] @ txt[i]), "ok")
        for i, sid in enumerate(sids)
    ]
    tables.upsert(
        spark.createDataFrame(
            rows,
            "sample_id string, model_id string, "
            "image_embedding array<float>, text_embedding array<float>, similarity float, "
            "status string",
        ),
        "embeddings",
    )
    tables.upsert(
        spark.createDataFrame(
            [(sid, urls[i], samples[i].caption, "en") for i, sid in enumerate(sids)],
            "sample_id string, url string, text string, language string",
        ),
        "candidates",
    )
    tables.upsert(
        spark.createDataFrame(
            [(sid, urls[i], "success", bytearray(jpegs[i]), "jpeg") for i, sid in enumerate(sids)],
            "sample_id string, url string, status string, image binary, format string",
        ),
        "images",
    )
    # sample 3 is unsafe: hidden in safe mode
    tables.upsert(
        spark.createDataFrame(
            [(sid, 0.9 if i == 3 else 0.05) for i, sid in enumerate(sids)],
            "sample_id string, punsafe float",
        ),
        "scores",
    )
    run(spark, cfg, tables)
    merge_index(spark, cfg, tables)
    searcher = Searcher.open(None, cfg)
    server, thread = start_background(searcher, cfg, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield base, sids, img, jpegs, samples
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_json_api(service):
    base, sids, img, jpegs, samples = service
    status, _, body = _get(base + "/health")
    assert status == 200 and json.loads(body)["ntotal"] == 40
    status, _, body = _get(
        base + "/search?q=" + urllib.request.quote(samples[0].caption) + "&k=5&dedup=0"
    )
    res = json.loads(body)["results"]
    assert status == 200 and len(res) == 5
    assert {"sample_id", "url", "caption", "similarity", "punsafe", "score"} <= set(res[0])
    # the same image bytes find themselves first (POST raw image and base64 JSON)
    status, out = _post(base + "/search?k=3&safe=0", jpegs[7], "image/jpeg")
    assert status == 200 and out["results"][0]["sample_id"] == sids[7]
    status, out = _post(
        base + "/search",
        json.dumps({"image_b64": base64.b64encode(jpegs[9]).decode(), "k": 2}).encode(),
        "application/json",
    )
    assert out["results"][0]["sample_id"] == sids[9]
    # vectors; safe mode hides the unsafe sample 3, off shows it
    v = img[3].tolist()
    _, out = _post(base + "/search", json.dumps({"vector": v, "k": 3}).encode(), "application/json")
    assert sids[3] not in [r["sample_id"] for r in out["results"]]
    _, out = _post(
        base + "/search", json.dumps({"vector": v, "k": 3, "safe": 0}).encode(), "application/json"
    )
    assert out["results"][0]["sample_id"] == sids[3]
    # image bytes are served by sample_id
    status, ctype, data = _get(base + "/image/" + sids[7])
    assert status == 200 and ctype == "image/jpeg" and data == jpegs[7]
    # bad input gets a clear 4xx, never a crash
    status, out = _post(base + "/search", b"{not json", "application/json")
    assert status == 400
    status, out = _post(
        base + "/search", json.dumps({"vector": [1.0, 2.0]}).encode(), "application/json"
    )
    assert status == 400 and "dimension" in out["error"]
    with pytest.raises(urllib.error.HTTPError) as e:
        _get(base + "/search?q=x&k=100000")
    assert e.value.code == 400
    with pytest.raises(urllib.error.HTTPError) as e:
        _get(base + "/image/../../etc/passwd")
    assert e.value.code in (400, 404)
    assert np.isfinite(img).all()


def test_browser_types_query_and_sees_results(service):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    base, sids, _, _, samples = service
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        driver.get(base + "/")
        box = driver.find_element(By.ID, "q")
        box.send_keys(samples[0].caption)
        box.send_keys(Keys.ENTER)
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result")) > 0)
        cards = driver.find_elements(By.CSS_SELECTOR, ".result")
        # k=20 by default; dedup may collapse near-identical renders, so at least a handful
        assert 5 <= len(cards) <= 20
        assert "results" in driver.find_element(By.ID, "status").text
        captions = [c.find_element(By.CSS_SELECTOR, ".caption").text for c in cards]
        assert all(captions)
        # thumbnails come from /image/<sample_id> and actually decode
        wait.until(
            lambda d: d.execute_script(
                "return [...document.querySelectorAll('.result img')].every(i => i.complete)"
            )
        )
        widths = driver.execute_script(
            "return [...document.querySelectorAll('.result img')].map(i => i.naturalWidth)"
        )
        assert widths and all(w == 64 for w in widths)
        # the unsafe sample never shows in safe mode (the default)
        shown = [c.get_attribute("data-sample-id") for c in cards]
        assert sids[3] not in shown and set(shown) <= set(sids)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)

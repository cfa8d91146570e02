"""Search service end to end on 127.0.0.1: tiny-clip embeddings -> index -> FastAPI/uvicorn
-> JSON API, hostile clients, live takedowns, and the page in real headless Chromium.

One module-scoped dataset + index + uvicorn server (in a thread of this process, so the
subset writer can use the test's Spark session); the live-takedown test changes the data,
so it runs last. Figures quoted in docs/reliability.md are printed with -s.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest

from laion_spark.config import load_config
from laion_spark.demo.synthetic import make_samples
from laion_spark.ids import sample_id
from laion_spark.index.merge import merge_index
from laion_spark.index.search import Searcher
from laion_spark.index.stage import run
from laion_spark.models.clip import load_clip
from laion_spark.serve.app import create_app, spark_subset_writer, start_background
from laion_spark.tables import Tables

HOSTILE_CAPTION = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>bad'
HOSTILE_URL = "javascript:window.__pwned=3"
N = 40


def _request(url: str, method: str = "GET", body: bytes | None = None, headers=None):
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def _json(url: str, method: str = "GET", body=None, ctype: str = "application/json"):
    data = body if isinstance(body, bytes | type(None)) else json.dumps(body).encode()
    status, headers, raw = _request(url, method, data, {"Content-Type": ctype} if data else {})
    return status, headers, json.loads(raw)


def _raw(port: int, data: bytes, wait: float = 10.0) -> bytes:
    """Send raw bytes, return whatever the server answers before closing (or `wait`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            pass
        return out


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header says w x h (a decompression-bomb shape): tiny, never decodable."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def svc(spark, tmp_path_factory):
    wd = tmp_path_factory.mktemp("serve") / "wd"
    cfg = load_config(
        "local",
        [
            f"workdir={wd}",
            "index.heldout_queries=10",
            "index.partitions=2",
            f"index.local_cache={wd}/cache",
            "serve.header_timeout_s=2",
            "serve.body_timeout_s=2",
            "serve.max_upload_mb=12",
        ],
    )
    tables = Tables(spark, cfg)
    clip = load_clip(cfg.embed, device="cpu")
    samples = make_samples(N, seed=5)
    jpegs = [s.jpeg(64) for s in samples]
    captions = [s.caption for s in samples]
    captions[11] = HOSTILE_CAPTION
    urls = [f"http://127.0.0.1:9/s/{s.index}.jpg" for s in samples]
    urls[11] = HOSTILE_URL
    langs = ["de" if i % 4 == 1 else "en" for i in range(N)]
    img = clip.encode_images(jpegs)
    txt = clip.encode_text(captions)
    sids = [sample_id(u, c) for u, c in zip(urls, captions, strict=True)]
    rows = [
        (sid, clip.model_id, img[i].tolist(), txt[i].tolist(), float(img[i] @ txt[i]), "ok")
        for i, sid in enumerate(sids)
    ]
    tables.upsert(
        spark.createDataFrame(
            rows,
            "sample_id string, model_id string, image_embedding array<float>, "
            "text_embedding array<float>, similarity float, status string",
        ),
        "embeddings",
    )
    tables.upsert(
        spark.createDataFrame(
            [(sid, urls[i], captions[i], langs[i]) for i, sid in enumerate(sids)],
            "sample_id string, url string, text string, language string",
        ),
        "candidates",
    )
    from laion_spark.takedown.pdq import hash_image

    pdq = [hash_image(j) for j in jpegs]
    import hashlib

    tables.upsert(
        spark.createDataFrame(
            [
                (
                    sid,
                    urls[i],
                    "success",
                    bytearray(jpegs[i]),
                    "jpeg",
                    hashlib.sha256(jpegs[i]).hexdigest(),
                    pdq[i][0],
                    pdq[i][1],
                )
                for i, sid in enumerate(sids)
            ],
            "sample_id string, url string, status string, image binary, format string, "
            "sha256 string, pdq string, pdq_quality int",
        ),
        "images",
    )
    # sample 3 is unsafe: hidden in safe mode
    tables.upsert(
        spark.createDataFrame(
            [
                (sid, 0.9 if i == 3 else 0.05, 0.1 * (i % 7), 5.0 + i / 10)
                for i, sid in enumerate(sids)
            ],
            "sample_id string, punsafe float, pwatermark float, aesthetic float",
        ),
        "scores",
    )
    run(spark, cfg, tables)
    merge_index(spark, cfg, tables)
    os.makedirs(wd / "report", exist_ok=True)
    (wd / "report" / "index.html").write_text("<html><body><h1>report page</h1></body></html>")
    searcher = Searcher.open(None, cfg)
    app = create_app(searcher, cfg, subset_writer=spark_subset_writer(cfg, spark), spark=spark)
    t0 = time.time()
    server = start_background(app, cfg, "127.0.0.1", 0)
    print(f"service started (model warmed) in {time.time() - t0:.1f} s")
    try:
        yield SimpleNamespace(
            base=server.url,
            port=server.port,
            app=app,
            cfg=cfg,
            tables=tables,
            sids=sids,
            img=img,
            jpegs=jpegs,
            samples=samples,
            captions=captions,
            urls=urls,
            langs=langs,
            pdq=pdq,
            wd=str(wd),
        )
    finally:
        server.stop()


def test_json_api(svc):
    base, sids = svc.base, svc.sids
    status, headers, h = _json(base + "/health")
    assert status == 200 and h["ntotal"] == N and h["nsfw_scores"] is True
    assert set(h["languages"]) == {"en", "de"} and h["report"] == "/report/"
    assert svc.wd not in json.dumps(h) and not h["path"].startswith("/")  # no absolute paths
    assert "default-src 'none'" in headers["content-security-policy"]
    q = urllib.request.quote(svc.captions[0])
    status, _, out = _json(base + f"/search?q={q}&k=5&dedup=false")
    res = out["results"]
    assert status == 200 and len(res) == 5
    assert {
        "sample_id",
        "faiss_id",
        "url",
        "link",
        "caption",
        "similarity",
        "punsafe",
        "pwatermark",
        "aesthetic",
        "score",
        "language",
    } <= set(res[0])
    assert all(isinstance(r["faiss_id"], str) and int(r["faiss_id"]) >= 0 for r in res)
    # paging: page 1 continues page 0
    _, _, p0 = _json(base + f"/search?q={q}&k=5&dedup=false&page=0")
    _, _, p1 = _json(base + f"/search?q={q}&k=5&dedup=false&page=1")
    _, _, both = _json(base + f"/search?q={q}&k=10&dedup=false")
    assert [r["sample_id"] for r in p0["results"] + p1["results"]] == [
        r["sample_id"] for r in both["results"]
    ]
    assert p0["has_more"] is True
    # the query's language picks its text tower; with no tower configured every language
    # goes through CLIP's, so the answer is the same
    _, _, de = _json(base + f"/search?q={q}&k=10&dedup=false&qlang=de")
    assert [r["sample_id"] for r in de["results"]] == [r["sample_id"] for r in both["results"]]
    # the same image bytes find themselves first (raw image POST and base64 JSON)
    status, _, out = _json(base + "/search?k=3&safe=false", "POST", svc.jpegs[7], "image/jpeg")
    assert status == 200 and out["results"][0]["sample_id"] == sids[7]
    b64 = base64.b64encode(svc.jpegs[9]).decode()
    status, _, out = _json(base + "/search", "POST", {"image_b64": b64, "k": 2})
    assert status == 200 and out["results"][0]["sample_id"] == sids[9]
    # vectors; safe mode hides the unsafe sample 3, off shows it
    v = svc.img[3].tolist()
    _, _, out = _json(base + "/search", "POST", {"vector": v, "k": 3})
    assert sids[3] not in [r["sample_id"] for r in out["results"]]
    _, _, out = _json(base + "/search", "POST", {"vector": v, "k": 3, "safe": "off"})
    assert out["results"][0]["sample_id"] == sids[3]
    # language filter
    _, _, out = _json(base + "/search", "POST", {"vector": v, "k": 5, "lang": "de"})
    assert out["results"] and all(r["language"] == "de" for r in out["results"])
    # a javascript: URL is data, never a link
    _, _, out = _json(
        base + "/search", "POST", {"vector": svc.img[11].tolist(), "k": 1, "safe": False}
    )
    assert out["results"][0]["url"] == HOSTILE_URL and out["results"][0]["link"] is None
    assert out["results"][0]["caption"] == HOSTILE_CAPTION
    # image bytes by sample_id; the report read-only with its own CSP
    status, headers, data = _request(base + "/image/" + sids[7])
    assert status == 200 and headers["content-type"] == "image/jpeg" and data == svc.jpegs[7]
    status, headers, data = _request(base + "/report/")
    assert (
        status == 200
        and b"report page" in data
        and "script-src" not in headers["content-security-policy"]
    )
    status, _, _ = _request(base + "/report/../../etc/passwd")
    assert status == 404


def test_hostile_clients_get_json_4xx(svc):
    base, port = svc.base, svc.port
    v = svc.img[0].tolist()
    cases = {
        "safe=maybe": ("GET", "/search?q=a&safe=maybe", None, None, 422),
        "safe=2": ("GET", "/search?q=a&safe=2", None, None, 422),
        "safe twice": ("GET", "/search?q=a&safe=1&safe=maybe", None, None, 422),
        "json safe null": ("POST", "/search", {"vector": v, "safe": None}, None, 422),
        "json safe 2": ("POST", "/search", {"vector": v, "safe": 2}, None, 422),
        "vector string": ("POST", "/search", {"vector": "abc"}, None, 422),
        "ragged vector": ("POST", "/search", {"vector": [[1.0, 2.0], [3.0]]}, None, 422),
        "vector of strings": ("POST", "/search", {"vector": ["1", "2"]}, None, 422),
        "wrong dimension": ("POST", "/search", {"vector": [1.0, 2.0]}, None, 422),
        "image_b64 number": ("POST", "/search", {"image_b64": 5}, None, 422),
        "image_b64 not base64": ("POST", "/search", {"image_b64": "@@@"}, None, 422),
        "deeply nested": ("POST", "/search", b"[" * 100_000 + b"]" * 100_000, None, 422),
        "not json": ("POST", "/search", b"{not json", None, 422),
        "two queries": ("POST", "/search", {"text": "a", "vector": v}, None, 422),
        "unknown field": ("POST", "/search", {"text": "a", "kk": 1}, None, 422),
        "k too large": ("GET", "/search?q=a&k=100000", None, None, 422),
        "k zero": ("GET", "/search?q=a&k=0", None, None, 422),
        "k text": ("GET", "/search?q=a&k=ten", None, None, 422),
        "missing q": ("GET", "/search", None, None, 422),
        "q too long": ("GET", "/search?q=" + "a" * 1001, None, None, 422),
        "page too deep": ("GET", "/search?q=a&k=200&page=5", None, None, 422),
        "bad lang": ("GET", "/search?q=a&lang=%3Cscript%3E", None, None, 422),
        "bad qlang": ("GET", "/search?q=a&qlang=%3Cscript%3E", None, None, 422),
        "text/plain body": ("POST", "/search", b"hello", {"Content-Type": "text/plain"}, 415),
        "not an image": ("POST", "/search", b"GIF89a-nope", {"Content-Type": "image/gif"}, 422),
        "8000x8000 png": (
            "POST",
            "/search",
            _png_header_only(8000, 8000),
            {"Content-Type": "image/png"},
            413,
        ),
        "wrong method": ("DELETE", "/search", None, None, 405),
        "wrong method health": ("PUT", "/health", b"x", {"Content-Type": "text/plain"}, 405),
        "bad sample_id": ("GET", "/image/not-a-sample-id", None, None, 422),
        "path traversal": ("GET", "/image/..%2F..%2Fetc%2Fpasswd", None, None, 404),
        "unknown path": ("GET", "/nope", None, None, 404),
        "foreign Host": ("GET", "/health", None, {"Host": "evil.example"}, 400),
        "subset bad name": ("POST", "/subsets", {"name": "../x", "text": "a"}, None, 422),
        "subset threshold w/o score": (
            "POST",
            "/subsets",
            {"name": "x", "text": "a", "mode": "threshold"},
            None,
            422,
        ),
    }
    got = {}
    for name, (method, path, body, headers, want) in cases.items():
        data = body if isinstance(body, bytes | type(None)) else json.dumps(body).encode()
        hdrs = dict(headers or {})
        if data is not None:
            hdrs.setdefault("Content-Type", "application/json")
        status, resp_headers, raw = _request(base + path, method, data, hdrs)
        got[name] = status
        assert status == want, (name, status, raw[:300])
        assert resp_headers["content-type"].startswith("application/json"), name
        assert json.loads(raw)["error"], name
    # protocol-level abuse, over raw sockets: still JSON
    too_big = _raw(
        port,
        b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        b"Content-Length: 200000000\r\n\r\n",
    )
    assert too_big.startswith(b"HTTP/1.1 413") and b'"error"' in too_big
    huge_header = _raw(
        port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: " + b"a" * 40_000 + b"\r\n\r\n"
    )
    assert huge_header.startswith(b"HTTP/1.1 431") and b'"error"' in huge_header
    garbage = _raw(port, b"\x16\x03\x01 not http at all\r\n\r\n")
    assert garbage.startswith(b"HTTP/1.1 400") and b'"error"' in garbage
    print(f"{len(cases) + 3} hostile cases, all JSON 4xx: {sorted(set(got.values()))}")
    status, _, h = _json(base + "/health")
    assert status == 200 and h["status"] == "ok"  # still up


def test_slow_clients_are_cut_off(svc):
    """Half a request line, half a body, idle connections: each is cut by a timeout while
    the service keeps answering others."""
    port = svc.port
    t0 = time.time()
    half_line = _raw(port, b"GET /sea", wait=15)
    t_line = time.time() - t0
    assert half_line.startswith(b"HTTP/1.1 408") and b'"error"' in half_line
    assert 1.5 <= t_line < 6, t_line  # header_timeout_s = 2
    t0 = time.time()
    half_body = _raw(
        port,
        b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"text": "a',
        wait=15,
    )
    t_body = time.time() - t0
    assert half_body.startswith(b"HTTP/1.1 408") and b'"error"' in half_body, half_body[:200]
    assert 1.5 <= t_body < 6, t_body  # body_timeout_s = 2
    # 100 idle connections: the service answers meanwhile, and drops them all in time
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
    try:
        t0 = time.time()
        status, _, _ = _request(svc.base + "/health")
        assert status == 200 and time.time() - t0 < 5
        time.sleep(3.5)
        answered = 0
        for s in idle:
            s.settimeout(3)
            try:
                data = s.recv(65536)  # a 408, then EOF; a blocking recv means still open
            except (TimeoutError, ConnectionError):
                continue
            answered += data.startswith(b"HTTP/1.1 408") or data == b""
        assert answered == len(idle)
    finally:
        for s in idle:
            s.close()
    print(
        f"slow clients cut: half request line after {t_line:.1f} s, half body after {t_body:.1f} s"
    )


def test_large_image_queries_bounded_memory(svc):
    """8 concurrent 4000x4000 images (PNG and JPEG, under the 16.7 MP cap): all answered,
    RSS growth of the serving process stays bounded (decodes: at most 2 at a time, JPEG at
    reduced scale)."""
    import psutil
    from PIL import Image

    rng = np.random.default_rng(0)
    small = (rng.random((250, 250, 3)) * 255).astype(np.uint8)
    big = Image.fromarray(small).resize((4000, 4000), Image.NEAREST)
    bufs = {}
    for fmt in ("PNG", "JPEG"):
        b = io.BytesIO()
        big.save(b, fmt, **({"compress_level": 1} if fmt == "PNG" else {"quality": 80}))
        bufs[fmt] = b.getvalue()
    del big
    proc = psutil.Process()
    base_rss = proc.memory_info().rss
    peak = [base_rss]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        jobs = [("PNG", "image/png"), ("JPEG", "image/jpeg")] * 4
        with ThreadPoolExecutor(8) as pool:
            results = list(
                pool.map(
                    lambda j: _request(
                        svc.base + "/search?k=3&safe=false",
                        "POST",
                        bufs[j[0]],
                        {"Content-Type": j[1]},
                    ),
                    jobs,
                )
            )
    finally:
        stop.set()
        sampler.join()
    assert all(r[0] == 200 for r in results), [r[0] for r in results]
    growth_mb = (peak[0] - base_rss) / 2**20
    sizes = {k: len(v) // 2**20 for k, v in bufs.items()}
    print(f"8 concurrent 4000x4000 queries ({sizes} MB bodies): RSS growth {growth_mb:.0f} MB")
    # one decoded 4000x4000 RGB is 46 MB; 8 unbounded PNG decodes would need ~400 MB
    assert growth_mb < 300, growth_mb


def test_page_in_chromium(svc, chromium, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    base, sids = svc.base, svc.sids

    def cards():
        return driver.find_elements(By.CSS_SELECTOR, ".result")

    def shown():
        return [c.get_attribute("data-sample-id") for c in cards()]

    def settled():
        return "results" in driver.find_element(By.ID, "status").text

    # a window tall enough that every thumbnail is in view (they load lazily)
    with chromium("1400,4000") as driver:
        wait = WebDriverWait(driver, 60)
        driver.get(base + "/")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#lang option")) == 3)
        assert driver.find_element(By.ID, "report-link").is_displayed()
        assert not driver.find_element(By.ID, "nsfw-notice").is_displayed()
        box = driver.find_element(By.ID, "q")
        box.send_keys(svc.captions[0])
        box.send_keys(Keys.ENTER)
        wait.until(lambda d: settled() and cards())
        assert 5 <= len(cards()) <= 20 and sids[3] not in shown()  # safe mode by default
        meta = cards()[0].find_element(By.CSS_SELECTOR, ".meta").text
        assert all(w in meta for w in ("score", "clip sim", "punsafe", "pwatermark", "aesthetic"))
        assert driver.find_element(By.ID, "legend").find_element(By.TAG_NAME, "summary").text
        # thumbnails come from /image/<sample_id> and decode
        wait.until(
            lambda d: d.execute_script(
                "return [...document.querySelectorAll('.result img')].every(i => i.complete)"
            )
        )
        widths = driver.execute_script(
            "return [...document.querySelectorAll('.result img')].map(i => i.naturalWidth)"
        )
        assert widths and all(w == 64 for w in widths)
        # controls: language, dedup off, k; the URL carries the state
        Select(driver.find_element(By.ID, "lang")).select_by_value("de")
        driver.find_element(By.ID, "dedup").click()
        k = driver.find_element(By.ID, "k")
        k.clear()
        k.send_keys("3")
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: "lang=de" in d.current_url and settled())
        assert len(cards()) == 3
        assert all(" de " in c.find_element(By.CSS_SELECTOR, ".meta").text for c in cards())
        first = shown()
        assert "k=3" in driver.current_url and "dedup=false" in driver.current_url
        # paging
        driver.find_element(By.ID, "next").click()
        wait.until(lambda d: "page=1" in d.current_url and settled() and shown() != first)
        assert (
            not set(shown()) & set(first)
            and "page 2" in driver.find_element(By.ID, "page-info").text
        )
        # click to enlarge, then close
        cards()[0].find_element(By.TAG_NAME, "img").click()
        lb = driver.find_element(By.ID, "lightbox")
        wait.until(lambda d: lb.is_displayed())
        assert driver.find_element(By.ID, "lightbox-img").get_attribute("src").endswith(shown()[0])
        driver.find_element(By.ID, "lightbox-close").click()
        wait.until(lambda d: not lb.is_displayed())
        # a shared URL restores q, k, safe, lang and runs
        shared = (
            base
            + "/?q="
            + urllib.request.quote(svc.captions[3])
            + "&k=40&safe=false&lang=en&dedup=false"
        )
        driver.get(shared)
        wait.until(lambda d: settled() and cards())
        assert driver.find_element(By.ID, "q").get_attribute("value") == svc.captions[3]
        assert not driver.find_element(By.ID, "safe").is_selected()
        assert (
            Select(driver.find_element(By.ID, "lang")).first_selected_option.get_attribute("value")
            == "en"
        )
        assert not driver.find_element(By.ID, "dedup").is_selected()
        english = sum(lang == "en" for lang in svc.langs)
        assert len(cards()) == english and sids[3] in shown()  # safe off: sample 3 is back
        # image query with preview, then the clear button
        path = str(tmp_path / "query.jpg")
        with open(path, "wb") as f:
            f.write(svc.jpegs[7])
        driver.find_element(By.ID, "file").send_keys(path)
        preview = driver.find_element(By.ID, "file-preview")
        wait.until(lambda d: preview.is_displayed())
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: settled() and shown() and shown()[0] == sids[7])
        driver.find_element(By.ID, "clear-image").click()
        assert (
            not preview.is_displayed()
            and not driver.find_element(By.ID, "clear-image").is_displayed()
        )
        # subset from the query: top 7
        driver.find_element(By.ID, "subset-name").send_keys("blue-things")
        value = driver.find_element(By.ID, "subset-value")
        value.clear()
        value.send_keys("7")
        driver.find_element(By.ID, "subset-go").click()
        status = driver.find_element(By.ID, "subset-status")
        wait.until(lambda d: "samples" in status.text or "error" in status.text)
        assert status.text == "subset query-blue-things: 7 samples", status.text
        from pyspark.sql import functions as F

        rows = svc.tables.read("subsets").where(F.col("subset") == "query-blue-things").count()
        assert rows == 7
        # hostile caption and javascript: URL: text only, no link, nothing ran
        driver.get(base + "/?q=bad&k=40&safe=false&lang=en&dedup=false")
        wait.until(lambda d: settled() and sids[11] in shown())
        card = next(c for c in cards() if c.get_attribute("data-sample-id") == sids[11])
        assert card.find_element(By.CSS_SELECTOR, ".caption").text == HOSTILE_CAPTION
        assert card.find_elements(By.TAG_NAME, "a") == []
        assert driver.execute_script("return window.__pwned === undefined")
        assert (
            driver.execute_script(
                'return document.querySelectorAll(\'a[href^="javascript"], script:not([src]), '
                ".caption *').length"
            )
            == 0
        )
        # no NSFW scores: a visible notice (safe mode would filter nothing)
        searcher = svc.app.state.searcher
        saved = searcher.meta["punsafe"].copy()
        searcher.meta["punsafe"] = np.nan
        try:
            driver.get(base + "/")
            notice = driver.find_element(By.ID, "nsfw-notice")
            wait.until(lambda d: notice.is_displayed())
        finally:
            searcher.meta["punsafe"] = saved


@pytest.mark.slow
def test_running_service_honours_takedowns(svc, spark):
    """url, domain, sha256 and pdq takedowns reach the running service within seconds.

    Latency = when a client polling the API stops seeing the sample, minus the commit of
    the takedowns version that lists it (url/domain/sha256: the request, recorded first;
    pdq: the resolution, recorded after the Hamming match)."""
    import hashlib

    from deltalake import DeltaTable
    from PIL import Image

    from laion_spark.takedown.pdq import hash_image
    from laion_spark.takedown.request import takedown

    base, sids, tables, cfg = svc.base, svc.sids, svc.tables, svc.cfg

    def visible(i: int) -> bool:
        _, _, out = _json(
            base + "/search",
            "POST",
            {"vector": svc.img[i].tolist(), "k": 5, "safe": False, "dedup": False},
        )
        return sids[i] in [r["sample_id"] for r in out["results"]]

    def take_down(kind: str, values: list[str], i: int) -> float:
        assert visible(i), kind
        hidden_at: list[float] = []
        done = threading.Event()

        def poll():
            while not done.is_set() or time.time() - t_done < 10:
                if not visible(i):
                    hidden_at.append(time.time())
                    return
                time.sleep(0.05)

        t_done = float("inf")
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        takedown(spark, cfg, tables, kind, values, reason="test")
        t_done = time.time()
        done.set()
        poller.join(15)
        assert hidden_at, f"{kind}: sample {i} still served 10 s after the takedown"
        commits = [
            h["timestamp"] / 1000 for h in DeltaTable(tables.location("takedowns")).history()
        ]
        return hidden_at[0] - max(c for c in commits if c <= hidden_at[0])

    # a re-encoded, smaller copy of image 21 is the listed PDQ hash (never the stored bytes)
    buf = io.BytesIO()
    Image.open(io.BytesIO(svc.jpegs[21])).resize((48, 48)).save(buf, "PNG")
    latencies = {
        "url": take_down("url", [svc.urls[5]], 5),
        "sha256": take_down("sha256", [hashlib.sha256(svc.jpegs[6]).hexdigest()], 6),
        "pdq": take_down("pdq", [hash_image(buf.getvalue())[0]], 21),
    }
    status, _, _ = _request(base + "/image/" + sids[5])
    assert status == 404  # /image refuses it too
    latencies["domain"] = take_down("domain", ["127.0.0.1"], 7)
    # every sample had a 127.0.0.1 URL except the javascript: one
    _, _, out = _json(
        base + "/search", "POST", {"vector": svc.img[7].tolist(), "k": 40, "safe": False}
    )
    assert [r["sample_id"] for r in out["results"]] == [sids[11]]
    print(
        "takedown commit -> hidden by the running service (s):",
        {k: round(v, 2) for k, v in latencies.items()},
    )
    assert max(latencies.values()) < 5  # the watcher polls every serve.takedown_poll_seconds (1 s)

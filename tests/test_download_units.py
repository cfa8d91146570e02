"""Download pieces without Spark: SSRF decisions, resize geometry, fetch over loopback."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import test_download_data as data

from laion_spark.demo.image_server import ImageServer
from laion_spark.download.fetch import Fetcher, is_opted_out, user_agent
from laion_spark.download.resize import process_image
from laion_spark.download.settings import DownloadSettings
from laion_spark.download.ssrf import check_address, check_host, parse_networks
from laion_spark.download.worker import download_rows
from laion_spark.settings import ConfigError

# ---------------- SSRF: pure decisions, nothing is ever connected to ----------------


@pytest.mark.parametrize(
    "ip, word",
    [
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("127.0.0.1", "loopback"),
        ("127.0.0.2", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "non-global"),
        ("::1", "loopback"),
        ("fd00::1", "private"),
        ("fe80::1", "link-local"),
        ("::", "unspecified"),
        ("ff02::1", "multicast"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:127.0.0.1", "loopback"),
        ("2002:0a00:0001::1", "private"),  # 6to4 wrapping 10.0.0.1
    ],
)
def test_ssrf_refuses_non_public_addresses(ip, word):
    reason = check_address(ip, [])
    assert reason is not None and word in reason, (ip, reason)


@pytest.mark.parametrize("ip", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_ssrf_allows_public_addresses(ip):
    assert check_address(ip, []) is None


def test_ssrf_allowlist_is_exact():
    allow = parse_networks(["127.0.0.1/32"])
    assert check_address("127.0.0.1", allow) is None
    assert "loopback" in check_address("127.0.0.2", allow)
    assert "private" in check_address("10.0.0.1", allow)
    # an allowed IPv4 address is allowed in its IPv4-mapped IPv6 form too
    assert check_address("::ffff:127.0.0.1", allow) is None
    assert check_address("not-an-ip", allow).startswith("not an IP")


def test_check_host_resolves_literals_without_network():
    ips, reason = check_host("169.254.169.254", 80, [])
    assert ips == ["169.254.169.254"] and "link-local" in reason


def test_allow_networks_validated_in_config(make_cfg):
    with pytest.raises(ConfigError, match="download.allow_networks"):
        make_cfg(["download.allow_networks=[not-a-network]"])
    with pytest.raises(ConfigError, match="download.resize_mode"):
        make_cfg(["download.resize_mode=stretch"])


# ---------------- opt-out header and user agent ----------------


def test_opt_out_header_rules():
    tags = ["noai", "noimageai", "noindex", "noimageindex"]
    assert is_opted_out(["noai"], "laion-spark", tags)
    assert is_opted_out(["nofollow, NoImageAI"], "laion-spark", tags)
    assert is_opted_out(["laion-spark: noindex"], "laion-spark", tags)
    assert not is_opted_out(["googlebot: noindex"], "laion-spark", tags)
    assert not is_opted_out(["nofollow"], "laion-spark", tags)


def test_user_agent_names_our_token_only():
    ua = user_agent("my-crawler")
    assert "my-crawler" in ua and "Googlebot" not in ua and "bingbot" not in ua


# ---------------- resize / decode ----------------


def _cfg(**kw) -> DownloadSettings:
    return DownloadSettings(**kw)


@pytest.mark.parametrize(
    "mode, src, expect",
    [
        ("border", (120, 80), (64, 64)),
        ("keep_ratio", (120, 80), (96, 64)),
        ("keep_ratio_largest", (120, 80), (64, 43)),
        ("center_crop", (120, 80), (64, 64)),
        ("no", (120, 80), (120, 80)),
        ("border", (30, 20), (64, 64)),  # upscale (lanczos) then pad
        ("keep_ratio", (30, 20), (96, 64)),
    ],
)
def test_resize_modes_sizes(mode, src, expect):
    r = process_image(data.jpeg(*src), _cfg(image_size=64, resize_mode=mode))
    assert r.status == "success", r.error
    assert (r.width, r.height) == expect
    assert (r.original_width, r.original_height) == src
    dec = cv2.imdecode(np.frombuffer(r.image, np.uint8), cv2.IMREAD_COLOR)
    assert dec.shape[:2] == (expect[1], expect[0])


def test_resize_only_if_bigger_keeps_small_images():
    r = process_image(
        data.jpeg(30, 20), _cfg(image_size=64, resize_mode="border", resize_only_if_bigger=True)
    )
    assert (r.width, r.height) == (30, 20)


def test_border_pads_white_and_big_jpeg_fast_decode_same_size():
    r = process_image(data.jpeg(1024, 256, (0, 0, 0)), _cfg(image_size=64, resize_mode="border"))
    img = cv2.imdecode(np.frombuffer(r.image, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (64, 64, 3)
    assert img[0, 32].min() > 240 and img[32, 32].max() < 20  # white band above, black image


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp"])
def test_encode_formats(fmt):
    r = process_image(
        data.png(), _cfg(image_size=32, encode_format=fmt, encode_quality=9 if fmt == "png" else 90)
    )
    assert r.status == "success" and r.format == fmt
    head = {"jpg": b"\xff\xd8", "png": b"\x89PNG", "webp": b"RIFF"}[fmt]
    assert r.image.startswith(head)


def test_skip_reencode_keeps_original_bytes():
    src = data.jpeg(50, 40)
    r = process_image(src, _cfg(resize_mode="no", skip_reencode=True))
    assert r.image == src
    r2 = process_image(src, _cfg(resize_mode="no", skip_reencode=False))
    assert r2.image != src


def test_exif_orientation_applied():
    r = process_image(data.exif_rotated_jpeg(), _cfg(resize_mode="no"))
    assert r.status == "success"
    assert (r.width, r.height) == (40, 80) and (r.original_width, r.original_height) == (40, 80)
    img = cv2.imdecode(np.frombuffer(r.image, np.uint8), cv2.IMREAD_COLOR)
    top, bottom = img[10, 20], img[70, 20]  # BGR
    assert top[2] > 200 and top[0] < 60  # red on top
    assert bottom[0] > 200 and bottom[2] < 60  # blue below


def test_alpha_composited_on_white_and_cmyk_and_16bit():
    r = process_image(
        data.rgba_transparent_png(), _cfg(resize_mode="no", encode_format="png", encode_quality=3)
    )
    img = cv2.imdecode(np.frombuffer(r.image, np.uint8), cv2.IMREAD_UNCHANGED)
    assert img.shape == (32, 32, 3) and img.min() == 255
    c = process_image(data.cmyk_jpeg(), _cfg(resize_mode="no"))
    assert c.status == "success" and c.source_format == "JPEG"
    px = cv2.imdecode(np.frombuffer(c.image, np.uint8), cv2.IMREAD_COLOR)[20, 20]
    assert px[0] > 150 and px[2] < 90, px  # still blue, not inverted
    p16 = process_image(data.png16(), _cfg(resize_mode="no", encode_format="png", encode_quality=3))
    img16 = cv2.imdecode(np.frombuffer(p16.image, np.uint8), cv2.IMREAD_UNCHANGED)
    assert (
        p16.status == "success"
        and img16.dtype == np.uint8
        and abs(int(img16[5, 5, 0]) - 40000 // 256) <= 1
    )


@pytest.mark.parametrize(
    "payload, status, cfg_kw",
    [
        (data.truncated_jpeg(), "failed_to_decode", {}),
        (b"this is not an image at all", "failed_to_decode", {}),
        (data.gif(), "unsupported_format", {}),
        (data.pixel_bomb_png(), "too_large", {}),
        (data.pixel_bomb_png(12000, 12000), "too_large", {}),
        (data.jpeg(30, 20), "too_small", {"min_image_size": 64}),
        (data.webp(), "unsupported_format", {"allowed_formats": ["JPEG"]}),
    ],
)
def test_bad_images_get_a_status(payload, status, cfg_kw):
    r = process_image(payload, _cfg(**cfg_kw))
    assert r.status == status and r.image is None and r.error


def test_pixel_bomb_is_refused_before_decoding():
    bomb = data.pixel_bomb_png(12000, 12000)
    assert len(bomb) < 200
    r = process_image(bomb, _cfg())
    assert "not decoded" in r.error and (r.original_width, r.original_height) == (12000, 12000)
    huge = process_image(data.pixel_bomb_png(), _cfg())
    assert huge.status == "too_large" and "not decoded" in huge.error


# ---------------- fetch over loopback ----------------


def test_fetch_retries_429_then_succeeds_and_sends_user_agent():
    with ImageServer() as srv:
        url = srv.rate_limited("/rl.jpg", data.jpeg(), fail_times=1, retry_after="0")
        f = Fetcher(_cfg(allow_networks=["127.0.0.1/32"], backoff_s=0.05, retries=2))
        res = f.fetch(url)
        assert res.status == "success" and res.attempts == 2 and srv.hits["/rl.jpg"] == 2
        assert (
            srv.user_agents[-1]
            == "Mozilla/5.0 (compatible; laion-spark; +https://github.com/laion_spark)"
        )
        # Retry-After beyond the bound is not waited for
        url2 = srv.rate_limited("/rl2.jpg", data.jpeg(), fail_times=5, retry_after="3600")
        res2 = f.fetch(url2)
        assert (
            res2.status == "http_error" and res2.http_status == 429 and "Retry-After" in res2.error
        )


def test_fetch_is_blocked_without_allowlist():
    with ImageServer() as srv:
        srv.add("/a.jpg", data.jpeg())
        res = Fetcher(_cfg()).fetch(srv.url("/a.jpg"))
        assert res.status == "blocked_address" and srv.hits["/a.jpg"] == 0


def test_robots_txt_optional_and_cached():
    with ImageServer() as srv:
        srv.add("/robots.txt", b"User-agent: laion-spark\nDisallow: /private/\n", "text/plain")
        srv.add("/private/a.jpg", data.jpeg())
        srv.add("/public/a.jpg", data.jpeg())
        rows = [
            ("p1", srv.url("/private/a.jpg")),
            ("p2", srv.url("/public/a.jpg")),
            ("p3", srv.url("/private/a.jpg?x=1")),
        ]
        off = {
            r["sample_id"]: r["status"]
            for r in download_rows(rows, _cfg(allow_networks=["127.0.0.1/32"]))
        }
        assert (
            off == {"p1": "success", "p2": "success", "p3": "success"}
            and srv.hits["/robots.txt"] == 0
        )
        on = {
            r["sample_id"]: r["status"]
            for r in download_rows(
                rows, _cfg(allow_networks=["127.0.0.1/32"], respect_robots_txt=True, threads=1)
            )
        }
        assert on == {"p1": "opted_out", "p2": "success", "p3": "opted_out"}
        assert srv.hits["/robots.txt"] == 1  # cached per host


def test_image_server_handler_routes():
    from laion_spark.demo.image_server import Route

    with ImageServer() as srv:
        srv.add_handler("/img/", lambda p: None if p.endswith("9.jpg") else Route(body=data.jpeg()))
        assert srv.base_url.startswith("http://127.0.0.1:")
        f = Fetcher(_cfg(allow_networks=["127.0.0.1/32"]))
        assert f.fetch(srv.url("/img/1.jpg")).status == "success"
        missing = f.fetch(srv.url("/img/9.jpg"))
        assert missing.status == "http_error" and missing.http_status == 404

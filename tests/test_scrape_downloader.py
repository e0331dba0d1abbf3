"""The downloader against the fixture's faulty image host (real HTTPS, no browser)."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image

from imgclf.scrape.downloader import (
    DownloadSettings,
    Rejected,
    download,
    fetch,
    make_client,
    prepare,
)
from imgclf.scrape.engines import ImageHit
from imgclf.scrape.store import DatasetStore, Origin
from imgclf.testing.scrape_fixture.fixtures import fixture_server_fixture, web_fixture  # noqa: F401 - fixtures


def settings_for(server, **changes) -> DownloadSettings:
    values = {
        "timeout_s": 1.5,
        "connect_timeout_s": 3,
        "deadline_s": 5,
        "max_bytes": 1_000_000,
        "concurrency": 8,
        "verify": str(server.cert),
        "allow_private_hosts": True,  # the fixture is on 127.0.0.1
    }
    return DownloadSettings(**{**values, **changes})


async def _outcome(server, name: str, settings: DownloadSettings):
    async with make_client(settings) as client:
        data, final_url = await fetch(client, server.img(name), settings)
        return prepare(data, settings), final_url


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("missing.jpg", "http_error"),
        ("fake.jpg", "not_image"),
        ("truncated.jpg", "damaged"),
        ("tiny.png", "too_small"),
        ("slow.jpg", "timeout"),
        ("bomb.png", "bomb"),
        ("huge.jpg", "too_large"),
        ("huge-stream.jpg", "too_large"),
        ("no-such-file.jpg", "http_error"),
    ],
)
def test_each_bad_answer_is_rejected_for_its_reason(web, name, reason):
    with pytest.raises(Rejected) as info:
        asyncio.run(_outcome(web, name, settings_for(web)))
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("photo1.jpg", (96, 72)),
        ("alpha.png", (96, 72)),
        ("photo.webp", (96, 72)),
        ("anim.gif", (96, 72)),
        ("redirect.jpg", (96, 72)),
    ],
)
def test_good_images_become_rgb_jpegs(web, name, size):
    image, final_url = asyncio.run(_outcome(web, name, settings_for(web)))
    assert (image.width, image.height) == size
    decoded = Image.open(io.BytesIO(image.jpeg))
    assert (decoded.format, decoded.mode) == ("JPEG", "RGB")
    if name == "redirect.jpg":
        assert final_url == web.img("target.jpg")


def test_redirect_limit_and_untrusted_certificate(web):
    with pytest.raises(Rejected) as info:
        asyncio.run(_outcome(web, "redirect.jpg", settings_for(web, max_redirects=0)))
    assert info.value.reason == "http_error"
    with pytest.raises(Rejected) as info:  # the fixture's self-signed certificate is not trusted
        asyncio.run(_outcome(web, "photo1.jpg", settings_for(web, verify=True)))
    assert info.value.reason == "http_error"


def _download(server, tmp_path, names, need, **changes):
    settings = settings_for(server, **changes)
    store = DatasetStore(tmp_path, near_duplicate_distance=6)

    def sink(hit, final_url, image):
        origin = Origin("cat", "test", hit.url, final_url, None)
        return store.save_unless_duplicate("train", "cats", image, origin)

    async def run():
        async with make_client(settings) as client:
            hits = [ImageHit(server.img(name)) for name in names]
            return await download(hits, need, sink, client, settings)

    return asyncio.run(run())


def test_never_fetches_more_than_still_needed(web, tmp_path):
    names = [f"extra{n}.jpg" for n in range(1, 13)]
    counts = _download(web, tmp_path, names, need=3)
    assert counts == {"downloaded": 3}
    assert web.count("127.0.0.1", "/img/") == 3
    assert sorted(p.name for p in (tmp_path / "train" / "cats").iterdir()) == [
        "cats_1.jpg",
        "cats_2.jpg",
        "cats_3.jpg",
    ]


def test_failures_are_replaced_by_later_candidates(web, tmp_path):
    names = ["missing.jpg", "dup-a.jpg", "dup-b.jpg", "fake.jpg", "extra1.jpg", "extra2.jpg", "extra3.jpg"]
    counts = _download(web, tmp_path, names, need=3, concurrency=2)
    assert counts == {"downloaded": 3, "http_error": 1, "duplicate_exact": 1, "not_image": 1}
    assert web.count("127.0.0.1", "/img/") == 6  # extra3 was not needed


@pytest.mark.parametrize("concurrency", [1, 3])
def test_concurrency_is_bounded(web, tmp_path, concurrency):
    web.wait_idle()
    web.max_active_images = 0
    web.image_latency_s = 0.2
    counts = _download(web, tmp_path, [f"extra{n}.jpg" for n in range(1, 7)], need=6, concurrency=concurrency)
    assert counts == {"downloaded": 6}
    assert web.max_active_images == concurrency

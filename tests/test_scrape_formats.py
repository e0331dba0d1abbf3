"""Every container of Google's result data, DuckDuckGo, and the blocks each engine names, read by
the real engines in real Chromium from the local HTTPS fixture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imgclf.scrape.engines.google import extract_hits, related_searches
from imgclf.scrape.scraper import scrape
from imgclf.testing.scrape_fixture import GoogleQuery, pages
from imgclf.testing.scrape_fixture.fixtures import (  # noqa: F401 - fixtures
    HEADER,
    fixture_server_fixture,
    scrape_config,
    web_fixture,
    write_csv,
)


def manifest(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]


# Each first-page container with a batch framing; the fixture's URLs carry "=" and "&", which
# Google escapes (once, or twice in the JSON.parse layout), so decoding is checked as well.
@pytest.mark.parametrize(
    ("layout", "framing"),
    [
        ("af", "hex"),
        ("udm2", "decimal"),
        ("jsstring", "hex"),
        ("jsonparse", "decimal"),
    ],
)
def test_google_reads_every_container_in_chromium(web, chromium_path, tmp_path, layout, framing):
    img = web.img
    web.google["cats"] = GoogleQuery(
        first=[img("extra1.jpg?size=l&v=1"), img("extra2.jpg?size=l&v=1")],
        scroll=[img("extra3.jpg?size=l&v=1"), img("extra4.jpg?size=l&v=1")],
        layout=layout,
        framing=framing,
    )
    csv = write_csv(tmp_path, "cats,4,cats,train\n")
    root = tmp_path / "dataset"

    summary = scrape(
        scrape_config(
            web, chromium_path, csv, root, "fallback_engines=[]", "engines.google.search_params={udm: 2}"
        )
    )

    assert summary["terms"][0]["have"] == 4
    rows = manifest(root)
    assert sorted(r["source_url"] for r in rows) == [img(f"extra{n}.jpg?size=l&v=1") for n in range(1, 5)]
    pages_by_url = {r["source_url"].split("/img/")[1]: r["page_url"] for r in rows}
    assert pages_by_url == {
        "extra1.jpg?size=l&v=1": "https://example.org/page/0",
        "extra2.jpg?size=l&v=1": "https://example.org/page/1",
        "extra3.jpg?size=l&v=1": "https://example.org/page/200",
        "extra4.jpg?size=l&v=1": "https://example.org/page/201",
    }
    assert web.count("www.google.com", "/search", q="cats", udm="2") == 2  # before/after consent
    google = summary["engines"]["google"]
    assert google["used"] == 4 and google["skipped"] == {"thumbnail_host": 5}  # + the doodle


def test_fixture_containers_are_what_the_reader_expects():
    """The fixture's own pages, read without a browser: every layout and framing, thumbnails
    and the doodle left out, related searches and chips found."""
    urls = ["https://a.example/1.jpg?w=1&h=2", "http://b.example/x/2.png"]
    for layout in pages.LAYOUTS:
        text = pages.google_results("cats", urls, layout=layout, related=["pink cats"], chips=["kitten"])
        hits = extract_hits(text, ("gstatic.com", "google.com"))
        assert [(h.url, h.page_url) for h in hits] == [
            (urls[0], "https://example.org/page/0"),
            (urls[1], "https://example.org/page/1"),
        ]
        assert related_searches(text, "cats") == ["cats kitten", "pink cats"]
    for framing in pages.BATCH_FRAMINGS:
        body = pages.google_batch(urls, 200, framing)
        assert [h.page_url for h in extract_hits(body, ("gstatic.com",))] == [
            "https://example.org/page/200",
            "https://example.org/page/201",
        ]


def test_duckduckgo_reads_the_vqd_flow(web, chromium_path, tmp_path):
    web.blocked.add("dogs")  # Google's CAPTCHA sends the search to the next engine
    web.ddg["dogs"] = [web.img(f"extra{n}.jpg") for n in range(5, 15)]
    csv = write_csv(tmp_path, "dogs,9,dogs,val\n")
    root = tmp_path / "dataset"

    summary = scrape(scrape_config(web, chromium_path, csv, root, "fallback_engines=[duckduckgo]"))

    assert summary["terms"][0]["engines"] == {"google": "blocked (CAPTCHA)", "duckduckgo": "ok"}
    rows = manifest(root)
    assert len(rows) == 9 and {r["engine"] for r in rows} == {"duckduckgo"}
    assert {r["source_url"] for r in rows} <= set(web.ddg["dogs"])
    assert all(
        r["page_url"] == f"https://example.com/ddg/{web.ddg['dogs'].index(r['source_url'])}" for r in rows
    )
    # The page loaded the first batch (4 results) with its token; the rest came from "next".
    assert web.count("duckduckgo.com", "/i.js", q="dogs", p="1") >= 3
    assert web.count("duckduckgo.com", "/i.js", q="dogs", s="8") == 1
    ddg = summary["engines"]["duckduckgo"]
    assert ddg["read"] == 10 and ddg["used"] == 10 and ddg["skipped"] == {}


@pytest.mark.parametrize(
    ("setup", "engine", "kind"),
    [
        (lambda web: web.js_challenge.add("birds"), "google", "JavaScript challenge"),
        (lambda web: web.ddg_anomaly.add("birds"), "duckduckgo", "CAPTCHA"),
        (lambda web: web.ddg_refused.add("birds"), "duckduckgo", "HTTP 403"),
    ],
)
def test_blocks_are_named_and_send_to_the_next_engine(
    web, chromium_path, tmp_path, caplog, setup, engine, kind
):
    setup(web)
    web.bing["birds"] = [web.img("extra15.jpg"), web.img("extra16.jpg")]
    csv = write_csv(tmp_path, "birds,2,birds,train\n")

    summary = scrape(
        scrape_config(web, chromium_path, csv, tmp_path / "ds", f"engine={engine}", "fallback_engines=[bing]")
    )

    assert summary["terms"][0]["engines"] == {engine: f"blocked ({kind})", "bing": "ok"}
    assert summary["engines"][engine]["blocks"] == {kind: 1}
    assert summary["terms"][0]["have"] == 2
    assert f"{engine} refused the search for 'birds'" in caplog.text

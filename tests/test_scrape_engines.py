"""Reading image URLs out of Google's page data, and the engine plumbing, without a browser."""

from __future__ import annotations

import pytest

from imgclf.scrape.engines import ImageHit, SearchSettings, make_engine
from imgclf.scrape.engines.base import host_matches, is_image_candidate
from imgclf.scrape.engines.google import extract_hits, json_values
from imgclf.testing.scrape_fixture import pages

IGNORE = ("gstatic.com", "google.com")


def test_result_page_data_gives_full_size_urls_with_their_pages():
    urls = ["https://a.example/1.jpg", "http://b.example/x/2.png?size=large"]
    html = pages.google_results("cats", urls)
    assert extract_hits(html, IGNORE) == [
        ImageHit(urls[0], "https://example.org/page/0"),
        ImageHit(urls[1], "https://example.org/page/1"),
    ]  # the gstatic thumbnails and the google.com doodle are left out


def test_batch_response_with_json_nested_in_strings():
    body = pages.google_batch(["https://c.example/3.webp"], start=200)
    assert body.startswith(")]}'")
    assert extract_hits(body, IGNORE) == [
        ImageHit("https://c.example/3.webp", "https://example.org/page/200")
    ]


def test_escaped_urls_and_unknown_wrappers_are_still_found():
    text = (
        '<script>var m={"k":["https://d.example/a?x\\u003d1\\u0026y\\u003d2",800,600],'
        '"t":["https://encrypted-tbn0.gstatic.com/images?q=tbn:1",100,75]};</script>'
    )
    assert extract_hits(text, IGNORE) == [ImageHit("https://d.example/a?x=1&y=2")]


def test_json_values_survives_garbage():
    assert list(json_values(")]}'\n\n12\n[1,2,3]\n5\n[4]\nnot json")) == [[1, 2, 3], [4]]
    assert list(json_values("AF_initDataCallback({key: 'ds:0', data:[broken")) == []
    blob = "AF_initDataCallback({key: 'ds:2', hash: '1', data:function(){return [7]}});"
    assert list(json_values(blob)) == [[7]]


@pytest.mark.parametrize(
    ("url", "usable"),
    [
        ("https://images.example.com/a.jpg", True),
        ("http://example.com/a", True),
        ("https://encrypted-tbn0.gstatic.com/images?q=1", False),
        ("https://www.google.com/logos/x.png", False),
        ("data:image/png;base64,AAAA", False),
        ("/relative/path.jpg", False),
        ("http://[broken/a.jpg", False),
        (None, False),
        (["https://x.example/a.jpg"], False),
    ],
)
def test_image_candidates(url, usable):
    assert is_image_candidate(url, IGNORE) is usable


def test_host_matching_is_by_domain_not_substring():
    assert host_matches("tse1.mm.bing.net", ["bing.net"])
    assert not host_matches("notbing.net", ["bing.net"])
    assert host_matches("WWW.Google.com.", ["google.com"])


def test_engines_are_configured_from_their_section():
    google = make_engine(
        "google",
        SearchSettings(),
        {
            "base_url": "https://www.google.de/",
            "search_params": {"udm": "2"},
            "ignore_domains": ["gstatic.com"],
        },
    )
    assert google.base_url == "https://www.google.de"
    assert google.ignore == ("gstatic.com", "google.de")
    assert google.search_params == {"udm": "2"}
    assert make_engine("bing", SearchSettings(), {}).ignore == ("bing.com",)
    assert SearchSettings.from_config({"max_scrolls": 3, "unrelated": 1}).max_scrolls == 3

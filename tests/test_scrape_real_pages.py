"""The readers against result pages and data that Google and Bing really served, captured by other
public projects (``shared/data/real-pages/``, described by its README and manifest.json).

Each claimed file must be read to at least 90 % of the full-size URLs an independent count finds
(the manifest's ``reference``), with the source pages where the data has them. The Google data is
also put into every container Google uses (the README's list) and read from each. Bing pages are
read by the engine itself from the DOM of real Chromium (scripts off, no network).
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import re
from pathlib import Path

import pytest
from conftest import IN_CI, REPO_ROOT, require

from imgclf.scrape.browser import open_browser
from imgclf.scrape.engines import SearchSettings, make_engine
from imgclf.scrape.engines.bing import related_searches as bing_related
from imgclf.scrape.engines.google import extract_hits
from imgclf.scrape.engines.google import related_searches as google_related

REAL_PAGES = Path(os.environ.get("IMGCLF_REAL_PAGES") or REPO_ROOT.parent / "shared" / "data" / "real-pages")
GOOGLE_IGNORE = ("gstatic.com", "google.com", "google.de")
WRAPS = {"raw": "", "xssi": ")]}'\n"}

if not IN_CI and not (REAL_PAGES / "manifest.json").is_file():
    pytest.skip(f"the real pages are not at {REAL_PAGES}", allow_module_level=True)


def manifest() -> list[dict]:
    require((REAL_PAGES / "manifest.json").is_file(), f"the real pages ({REAL_PAGES})")
    return json.loads((REAL_PAGES / "manifest.json").read_text())["pages"]


def pages_for(engine: str, claimed: bool = True) -> list[dict]:
    return [p for p in manifest() if p["engine"] == engine and p["claimed"] is claimed]


def read(page: dict) -> str:
    return WRAPS[page["wrap"]] + (REAL_PAGES / page["file"]).read_text(encoding="utf-8")


# -- independent counts (regular expressions, not the project's readers) --------------------


def unescaped(url: str) -> str:
    while "\\" in url:
        url = re.sub(r"\\+u([0-9a-fA-F]{4})", lambda m: chr(int(m[1], 16)), url).replace("\\/", "/")
        if "\\" in url and not re.search(r"\\+u[0-9a-fA-F]{4}", url):
            break
    return url


def reference_triples(text: str) -> set[str]:
    """Full-size image triples ``["https://...", h, w]`` (not gstatic thumbnails)."""
    urls = {unescaped(m[1]) for m in re.finditer(r'\[\s*"(https?://[^"]+)",\s*\d+,\s*\d+\s*\]', text)}
    return {u for u in urls if "gstatic.com" not in u}


def reference_pages(text: str) -> int:
    """Results whose "2003" record names a source page."""
    return len(re.findall(r'"2003":\s*\[\s*null,\s*"[^"]*",\s*"https?://', text))


def reference_bing(text: str) -> dict[str, str]:
    """Each tile's ``murl`` and its ``purl`` (some real tiles have an empty one)."""
    urls = {}
    for tag in re.findall(r"<a\b[^>]*\bclass=\"iusc\"[^>]*>", text):
        m = re.search(r'\sm="([^"]*)"', tag)
        if m:
            record = json.loads(html.unescape(m[1]))
            urls.setdefault(record["murl"], record.get("purl") or "")
    return urls


# -- Google ----------------------------------------------------------------------------------


def google_data_text() -> str:
    (page,) = [p for p in pages_for("google") if p["reference"] == "triples"]
    return read(page)


def test_claimed_google_data_is_read_with_source_pages():
    for page in pages_for("google"):
        text = read(page)
        expected = reference_triples(text)
        hits = extract_hits(text, GOOGLE_IGNORE)
        found = {hit.url for hit in hits}
        assert len(expected) == 100, page["file"]  # the count the README gives
        assert len(found & expected) >= 0.9 * len(expected), page["file"]
        assert found <= expected  # nothing else: no thumbnail, no google.com URL
        assert not any("\\" in url for url in found)  # every escape decoded
        assert sum(hit.page_url is not None for hit in hits) >= 0.9 * reference_pages(text)
        assert all("google." not in (hit.page_url or "") for hit in hits)


def containers(data: list) -> dict[str, str]:
    """The 2026 data in every container the README lists (how Google wraps it)."""
    compact = json.dumps(data, separators=(",", ":"))
    envelope = json.dumps([["wrb.fr", "HoAMBc", compact, None, None, None, "generic"]])
    chunk = compact + "\n"
    return {
        "AF_initDataCallback": f"<script nonce='x'>AF_initDataCallback({{key: 'ds:1', hash: '2', "
        f"data:{compact}, sideChannel: {{}}}});</script>",
        "udm=2 script object": f"<script nonce='x'>(function(){{window.W_jd = {compact};}})();</script>",
        "var data = string": f"<script>var data = {json.dumps(compact)};</script>",
        "JSON.parse, escapes doubled": "<script>var d = JSON.parse('"
        + compact.replace("\\", "\\\\").replace("'", "\\'")
        + "');</script>",
        ")]}' decimal framing": f')]}}\'\n\n{len(envelope)}\n{envelope}\n25\n[["di",42]]\n',
        ")]}' hex framing": f')]}}\'\n19;["qY7YXPKuMcKua-uQt5gJ"]\n4;[2]\n{len(chunk):x};{chunk}4;[9]\n0;',
    }


def test_google_data_in_every_container():
    text = google_data_text()
    expected = reference_triples(text)
    pages_expected = reference_pages(text)
    data = json.loads(text.removeprefix(")]}'\n"))
    for name, wrapped in containers(data).items():
        hits = extract_hits(wrapped, GOOGLE_IGNORE)
        found = {hit.url for hit in hits}
        assert len(found & expected) >= 0.9 * len(expected), name
        assert found <= expected, name
        assert sum(hit.page_url is not None for hit in hits) >= 0.9 * pages_expected, name


def test_unclaimed_and_thumbnail_only_google_pages_yield_no_wrong_urls():
    for page in pages_for("google", claimed=False):
        hits = extract_hits(read(page), GOOGLE_IGNORE)
        assert all("gstatic.com" not in hit.url and "google." not in hit.url for hit in hits)
        if page["reference"] == "any":  # the no-JavaScript page: thumbnails only
            assert hits == []


def test_google_related_searches_from_the_real_data():
    phrases = google_related(google_data_text(), "cats")
    assert "pink cats" in phrases and "kawaii cats" in phrases  # "Related searches" records
    assert "cats kitten" in phrases  # a chip, as a refinement of the query
    assert len(phrases) == len({p.casefold() for p in phrases}) and "cats" not in phrases


# -- Bing --------------------------------------------------------------------------------------


def test_claimed_bing_pages_are_read_by_the_engine_in_chromium(chromium_path):
    engine = make_engine("bing", SearchSettings(), {"ignore_domains": ["bing.net"]})
    pages = pages_for("bing")
    assert len(pages) == 3

    async def read_all() -> dict[str, list]:
        cfg = {"executable_path": chromium_path, "host_resolver_rules": "MAP * ~NOTFOUND"}
        results = {}
        async with open_browser(cfg) as context:
            for entry in pages:
                tab = await context.new_page()
                await tab.route("**/*", lambda route: route.abort())  # nothing leaves the page
                await tab.set_content(read(entry), wait_until="domcontentloaded")
                results[entry["file"]] = await engine.harvest(tab)
                await tab.close()
        return results

    results = asyncio.run(read_all())
    for entry in pages:
        expected = reference_bing(read(entry))
        hits = results[entry["file"]]
        found = {hit.url for hit in hits}
        assert expected and len(found & expected.keys()) >= 0.9 * len(expected), entry["file"]
        with_page = {url for url, page_url in expected.items() if page_url}
        assert {hit.url for hit in hits if hit.page_url} == with_page & found
        assert all(hit.page_url == expected[hit.url] for hit in hits if hit.page_url)


def test_bing_related_searches_from_a_real_page():
    (page,) = [p for p in pages_for("bing") if p["file"] == "bing-2026-04-search.html"]
    phrases = bing_related(read(page), "golang gopher")
    assert phrases[:3] == ["Golang Gopher Meme", "Golang Gopher Cute", "Golang Funny Gopher"]
    assert len(phrases) > 50

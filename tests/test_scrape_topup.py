"""Related searches and topping up the weakest classes, in real Chromium against the fixture."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from imgclf.errors import ImgclfError
from imgclf.scrape.browser import open_browser
from imgclf.scrape.engines import SearchSettings, make_engine
from imgclf.scrape.scraper import scrape, weakest_classes
from imgclf.testing.scrape_fixture import GoogleQuery
from imgclf.testing.scrape_fixture.fixtures import (  # noqa: F401 - fixtures
    HEADER,
    cli_overrides,
    fixture_server_fixture,
    scrape_config,
    web_fixture,
)


def manifest(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and p.name != "manifest.jsonl"
    }


def test_engines_read_related_searches_in_chromium(web, chromium_path):
    web.google["cats"] = GoogleQuery(
        first=[web.img("extra1.jpg")], related=["pink cats"], chips=["kitten"], layout="udm2"
    )
    web.bing["cats"] = [web.img("extra2.jpg")]
    web.bing_related["cats"] = ["Cats Cute", "Cats Funny"]
    web.ddg["cats"] = [web.img("extra3.jpg")]
    web.ddg_related["cats"] = ["cats and dogs", "cats movie"]
    overrides = {"bing": {"ignore_domains": ["bing.net"]}}

    async def ask() -> dict[str, list[str]]:
        cfg = {
            "executable_path": chromium_path,
            "ignore_https_errors": True,
            "host_resolver_rules": web.host_resolver_rules(),
        }
        found = {}
        async with open_browser(cfg) as context:
            for name in ("google", "bing", "duckduckgo"):
                engine = make_engine(
                    name, SearchSettings(scroll_pause_s=0.5, stall_scrolls=1), overrides.get(name, {})
                )
                await engine.search(context, "cats", 1, on_related=lambda p, n=name: found.update({n: p}))
        return found

    assert asyncio.run(ask()) == {
        "google": ["cats kitten", "pink cats"],
        "bing": ["Cats Cute", "Cats Funny"],
        "duckduckgo": ["cats and dogs", "cats movie"],
    }


def test_weakest_classes_by_recall_or_f1(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(
        json.dumps(
            {
                "accuracy": 0.7,
                "per_class": {
                    "a": {"precision": 0.9, "recall": 0.5, "f1": 0.64, "support": 10},
                    "b": {"precision": 0.2, "recall": 0.6, "f1": 0.3, "support": 10},
                    "c": {"precision": 0.9, "recall": 0.9, "f1": 0.9, "support": 10},
                },
            }
        )
    )
    assert weakest_classes(path, 2) == ["a", "b"]
    assert weakest_classes(path, 1, "f1") == ["b"]
    with pytest.raises(ImgclfError, match="not found; evaluate the model first"):
        weakest_classes(tmp_path / "none.json", 1)
    with pytest.raises(ImgclfError, match="top_up.metric=accuracy: use recall or f1"):
        weakest_classes(path, 1, "accuracy")


def test_top_up_adds_new_train_images_from_related_searches(web, chromium_path, tmp_path):
    """``scripts/scrape.py top_up.weakest=1 top_up.from=...``: the weakest class gets new train
    images from the related searches Google suggests for its phrasings; nothing is deleted, no
    image already in the dataset is taken again, other classes and splits are left alone."""
    img = web.img
    web.google["hockey player"] = GoogleQuery(
        first=[img(f"photo{n}.jpg") for n in (1, 2, 3)], related=["hockey goalie", "hockey skates"]
    )
    web.google["ice hockey"] = GoogleQuery(first=[img("photo4.jpg")], related=["ice rink"])
    web.google["hockey goalie"] = GoogleQuery(
        first=[img("photo1-resized.jpg"), img("extra1.jpg"), img("extra2.jpg")]
    )
    web.google["hockey skates"] = GoogleQuery(first=[img(f"extra{n}.jpg") for n in (3, 4, 5, 6)])
    web.google["soccer player"] = GoogleQuery(first=[img("soccer1.jpg"), img("soccer2.jpg")])
    csv = tmp_path / "searchterms.csv"
    csv.write_text(
        HEADER + "hockey player,3,hockey,train\nice hockey,1,hockey,val\nsoccer player,2,soccer,train\n"
    )
    root = tmp_path / "dataset"
    scrape(scrape_config(web, chromium_path, csv, root, "fallback_engines=[]"))
    before = snapshot(root)
    assert len(before) == 6
    metrics = tmp_path / "eval_val" / "metrics.json"
    metrics.parent.mkdir()
    metrics.write_text(
        json.dumps(
            {
                "per_class": {
                    "hockey": {"precision": 0.8, "recall": 0.4, "f1": 0.53, "support": 5},
                    "soccer": {"precision": 0.6, "recall": 0.9, "f1": 0.72, "support": 5},
                }
            }
        )
    )

    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "scrape.py"),
            *cli_overrides(web, chromium_path, csv, root),
            "fallback_engines=[]",
            "top_up.weakest=1",
            f"top_up.from='{metrics}'",
            "top_up.extra_images=5",
            f"hydra.run.dir='{tmp_path / 'hydra'}'",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert "lowest recall: hockey" in result.stdout
    after = snapshot(root)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing touched
    added = sorted(set(after) - set(before))
    assert added == [f"train/hockey/hockey_{n}.jpg" for n in range(4, 9)]
    rows = {r["path"]: r for r in manifest(root)}
    assert {rows[p]["source_url"].rsplit("/", 1)[1] for p in added} == {
        "extra1.jpg",
        "extra2.jpg",
        "extra3.jpg",
        "extra4.jpg",
        "extra5.jpg",
    }
    assert {rows[p]["search_term"] for p in added} == {"hockey goalie", "hockey skates"}
    # The CSV's phrasings were searched first (their results were all in the dataset already),
    # then their related searches; the resized copy of photo1 was refused as a near duplicate.
    assert web.count("www.google.com", "/search", q="ice hockey") == 2
    assert web.count("www.google.com", "/search", q="ice rink") == 0  # enough before it
    assert web.count("www.google.com", "/search", q="soccer player") == 1  # only the first scrape
    assert "duplicate_near" in result.stdout

"""Related searches and topping up the weakest classes, in real Chromium against the fixture."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from imgclf.errors import ImgclfError
from imgclf.scrape.browser import open_browser
from imgclf.scrape.engines import SearchSettings, make_engine
from imgclf.scrape.scraper import scrape
from imgclf.scrape.weak_classes import project, top_up_sizes, weakest_classes
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


def curve_metrics(path: Path, curves: dict[str, list[tuple[int, float]]]) -> Path:
    """A metrics.json with eval.py curve=true's ``learning_curve`` rows: per class, (images, recall)
    at each of the four fractions."""
    rows = [
        {
            "per_class": {
                name: {"images": points[i][0], "recall": points[i][1]} for name, points in curves.items()
            }
        }
        for i in range(4)
    ]
    per_class = {name: {"recall": points[-1][1], "f1": points[-1][1]} for name, points in curves.items()}
    path.write_text(json.dumps({"per_class": per_class, "learning_curve": {"rows": rows}}))
    return path


def test_the_learning_curve_sizes_each_class_of_a_top_up(tmp_path):
    """Each weak class gets the images at which its line of recall against log2(images) reaches
    the other classes' mean recall, between extra_images and max_images; a flat curve gets the
    fewest, one already there the fewest too, one out of reach the most."""
    metrics = curve_metrics(
        tmp_path / "metrics.json",
        {
            "rising": [(10, 0.55), (20, 0.65), (30, 0.71), (40, 0.75)],  # +0.1 per doubling
            "flat": [(10, 0.5), (20, 0.5), (30, 0.51), (40, 0.5)],
            "steep": [(10, 0.0), (20, 0.1), (30, 0.16), (40, 0.2)],  # 7.5 doublings from 0.95
            "crawl": [(10, 0.1), (20, 0.112), (30, 0.119), (40, 0.124)],  # +0.012: 0.9 is 67 doublings out
            "good": [(10, 0.9), (20, 0.9), (30, 0.9), (40, 0.9)],
            "best": [(10, 0.8), (20, 0.9), (30, 0.95), (40, 1.0)],
        },
    )
    assert project(json.loads(metrics.read_text())["learning_curve"], "rising").per_doubling == pytest.approx(
        0.1, abs=0.005
    )
    weak = ["rising", "flat", "steep", "crawl"]
    sizes = top_up_sizes(metrics, weak, "curve", extra_images=10, max_images=200)
    target = (0.9 + 1.0) / 2  # the classes not topped up
    rising = project(json.loads(metrics.read_text())["learning_curve"], "rising")
    expected = math.ceil(40 * 2 ** ((target - 0.75) / rising.per_doubling)) - 40
    assert sizes["rising"].extra == expected and 100 < expected < 200
    assert sizes["rising"].needed == expected + 40 and sizes["rising"].target == pytest.approx(0.95)
    assert "about" in sizes["rising"].why and "the other classes' mean 0.95" in sizes["rising"].why
    assert sizes["flat"].extra == 10 and "flat, more of these images would not lift it" in sizes["flat"].why
    assert sizes["steep"].extra == 200 and "(at most max_images)" in sizes["steep"].why
    assert sizes["crawl"].extra == 200 and "lies beyond 1024x its images" in sizes["crawl"].why
    # an explicit target; a class already above it gets the fewest
    sizes = top_up_sizes(metrics, ["rising", "good"], "curve", 5, 100, target_recall=0.8)
    assert sizes["rising"].extra == math.ceil(40 * 2 ** (0.05 / rising.per_doubling)) - 40
    assert sizes["good"].extra == 5 and "already at target_recall 0.80" in sizes["good"].why
    # a need below the fewest is raised to it
    assert top_up_sizes(metrics, ["rising"], "curve", 50, 100, target_recall=0.77)["rising"].extra == 50
    # all classes topped up: the target is the mean of them all
    every = top_up_sizes(metrics, ["rising", "flat", "steep", "crawl", "good", "best"], "curve", 1, 1000)
    assert every["rising"].target == pytest.approx((0.75 + 0.5 + 0.2 + 0.124 + 0.9 + 1.0) / 6)
    # fixed: extra_images each, no curve needed
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"per_class": {"a": {"recall": 0.5}}}))
    assert {n: s.extra for n, s in top_up_sizes(plain, ["a"], "fixed", 7, 7).items()} == {"a": 7}


@pytest.mark.parametrize(
    "curve, message",
    [
        (None, "has no learning curve to size the top-up by: evaluate with python scripts/eval.py split=val"),
        ({"rows": []}, "has no learning curve"),
        ({"rows": [{"per_class": {"a": {"images": "10", "recall": 0.5}}}]}, "has no learning curve"),
        ({"rows": [{"per_class": {"../../etc": {"images": 10, "recall": 0.5}}}]}, "etc"),
    ],
)
def test_a_missing_or_crafted_learning_curve_is_refused(tmp_path, curve, message):
    metrics = {"per_class": {"a": {"recall": 0.5}}}
    if curve is not None:
        metrics["learning_curve"] = curve
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    with pytest.raises(ImgclfError, match=message.replace(".", r"\.")):
        top_up_sizes(path, ["a"], "curve", 5, 10)


def test_top_up_sizing_settings_are_checked(tmp_path):
    path = curve_metrics(tmp_path / "metrics.json", {"a": [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4)]})
    with pytest.raises(ImgclfError, match="sizing=bigger: use fixed"):
        top_up_sizes(path, ["a"], "bigger", 5, 10)
    with pytest.raises(ImgclfError, match="give at least 1 image, and max_images of at least extra_images"):
        top_up_sizes(path, ["a"], "curve", 10, 5)


def test_top_up_adds_new_train_images_from_related_searches(web, chromium_path, tmp_path):
    """``scripts/scrape.py top_up.weakest=1 top_up.from=... top_up.sizing=curve``: the weakest
    class gets the new train images its learning curve says it needs, from the related searches
    Google suggests for its phrasings; nothing is deleted, no image already in the dataset is taken
    again, other classes and splits are left alone."""
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
    # eval.py curve=true's rows: hockey's recall climbs 0.23 per doubling of its 3 train images, to
    # 0.60 with all of them; reaching soccer's 0.90 takes 3 * 2 ** (0.3 / 0.23) = 7.4, so 8 images
    hockey_curve = [
        (1, 0.6 - 0.23 * math.log2(3)),
        (2, 0.6 - 0.23 * math.log2(1.5)),
        (2, 0.6 - 0.23 * math.log2(1.5)),
        (3, 0.6),
    ]
    rows = [
        {"per_class": {"hockey": {"images": n, "recall": r}, "soccer": {"images": 2, "recall": 0.9}}}
        for n, r in hockey_curve
    ]
    metrics.write_text(
        json.dumps(
            {
                "per_class": {
                    "hockey": {"precision": 0.8, "recall": 0.4, "f1": 0.53, "support": 5},
                    "soccer": {"precision": 0.6, "recall": 0.9, "f1": 0.72, "support": 5},
                },
                "learning_curve": {"rows": rows},
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
            "top_up.sizing=curve",
            "top_up.extra_images=2",
            "top_up.max_images=10",
            f"hydra.run.dir='{tmp_path / 'hydra'}'",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "250"},  # the table's reasons on one line each
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert "lowest recall: hockey" in result.stdout
    assert (
        "recall 0.60 with 3 images, +0.23 per doubling: about 8 images to reach the other classes' mean 0.90"
        in result.stdout
    )
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

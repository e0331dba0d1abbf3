"""The scraper end to end: real Chromium (through Playwright) against the local HTTPS fixture that
plays Google Images, its consent page, Bing and a faulty image host. Checks the exact files on
disk, the manifest, the summary, resuming, and that nothing outside the dataset is touched."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from PIL import Image

from imgclf.data.hashing import hamming, hex_to_hash, perceptual_hash, sha256_file
from imgclf.data.images import load_image
from imgclf.locks import lock_paths
from imgclf.scrape.scraper import scrape
from imgclf.testing.scrape_fixture import GoogleQuery
from imgclf.testing.scrape_fixture.fixtures import (  # noqa: F401 - fixtures
    HEADER,
    cli_overrides,
    fixture_server_fixture,
    scrape_config,
    web_fixture,
    write_csv,
)

# The first result page of "hockey player": three good photos and every kind of bad answer.
HOCKEY_FIRST = [
    "photo1.jpg",
    "photo2.jpg",
    "photo3.jpg",
    "missing.jpg",
    "fake.jpg",
    "truncated.jpg",
    "tiny.png",
    "slow.jpg",
    "redirect.jpg",
    "dup-a.jpg",
    "dup-b.jpg",
    "alpha.png",
    "photo.webp",
    "anim.gif",
    "bomb.png",
    "huge.jpg",
    "huge-stream.jpg",
]
HOCKEY_SAVED = {
    "photo1.jpg",
    "photo2.jpg",
    "photo3.jpg",
    "photo4.jpg",
    "photo5.jpg",
    "photo6.jpg",
    "photo7.jpg",
    "redirect.jpg",
    "alpha.png",
    "photo.webp",
    "anim.gif",
}  # ... plus one of dup-a.jpg / dup-b.jpg


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def snapshot(directory: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """Size and mtime of every file under ``directory`` except those under ``skip``."""
    return {
        p.relative_to(directory).as_posix(): snapshot_of(p)
        for p in directory.rglob("*")
        if p.is_file() and skip not in p.parents
    }


def snapshot_of(path: Path) -> tuple[int, int]:
    return path.stat().st_size, path.stat().st_mtime_ns


def manifest(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]


def url_name(url: str) -> str:
    return url.rsplit("/img/", 1)[1]


def source_picture(server, name: str):
    route = server.routes[name]
    if route.redirect_to:
        route = server.routes[route.redirect_to.rsplit("/", 1)[1]]
    return load_image(route.body)


def check_rows_match_files(server, root: Path, rows: list[dict]) -> None:
    """Every manifest row describes the file at its path, and that file shows its source."""
    for row in rows:
        path = root / row["path"]
        assert sha256_file(path) == row["sha256"]
        assert path.stat().st_size == row["bytes"]
        with Image.open(path) as saved:
            assert (saved.format, saved.mode, saved.size) == ("JPEG", "RGB", (row["width"], row["height"]))
        picture = load_image(path)
        assert hamming(perceptual_hash(picture), hex_to_hash(row["phash"])) <= 4
        original = source_picture(server, url_name(row["source_url"]))
        assert hamming(perceptual_hash(picture), perceptual_hash(original)) <= 4


def test_google_end_to_end(web, chromium_path, tmp_path, monkeypatch):
    img = web.img
    web.google["hockey player"] = GoogleQuery(
        first=[img(name) for name in HOCKEY_FIRST],
        scroll=[img("photo4.jpg"), img("photo5.jpg"), img("photo6.jpg")],
        more=[img("photo7.jpg")],
    )
    # Val: the same URL as a train image, a resized copy, a byte-identical copy, three new.
    web.google["soccer player"] = GoogleQuery(
        first=[
            img(n)
            for n in (
                "photo2.jpg",
                "photo1-resized.jpg",
                "photo3-copy.jpg",
                "soccer1.jpg",
                "soccer2.jpg",
                "soccer3.jpg",
            )
        ]
    )
    csv = write_csv(tmp_path, "hockey player,30,hockey_player,train\nsoccer player,10,soccer_player,val\n")
    root = tmp_path / "data" / "image_dataset"
    (tmp_path / "data" / "other.txt").parent.mkdir(parents=True)
    (tmp_path / "data" / "other.txt").write_text("beside the dataset")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = snapshot(tmp_path, skip=root)

    summary = scrape(scrape_config(web, chromium_path, csv, root))

    assert files_under(root) == sorted(
        ["manifest.jsonl"]
        + [f"train/hockey_player/hockey_player_{n}.jpg" for n in range(1, 13)]
        + [f"val/soccer_player/soccer_player_{n}.jpg" for n in range(1, 4)]
    )
    rows = manifest(root)
    hockey = {url_name(r["source_url"]) for r in rows if r["class"] == "hockey_player"}
    assert hockey - {"dup-a.jpg", "dup-b.jpg"} == HOCKEY_SAVED
    assert len(hockey & {"dup-a.jpg", "dup-b.jpg"}) == 1
    assert {url_name(r["source_url"]) for r in rows if r["split"] == "val"} == {
        "soccer1.jpg",
        "soccer2.jpg",
        "soccer3.jpg",
    }
    assert all(
        r["engine"] == "google" and r["page_url"].startswith("https://example.org/page/") for r in rows
    )
    redirected = next(r for r in rows if r["source_url"].endswith("/redirect.jpg"))
    assert redirected["final_url"] == img("target.jpg")
    assert sorted(r["path"] for r in rows) == [f for f in files_under(root) if f.endswith(".jpg")]
    check_rows_match_files(web, root, rows)

    hockey_report, soccer_report = summary["terms"]
    # Short, so the fallbacks were asked too.
    assert hockey_report["engines"] == {"google": "ok", "bing": "ok", "duckduckgo": "ok"}
    assert (hockey_report["found"], hockey_report["downloaded"], hockey_report["have"]) == (21, 12, 12)
    assert hockey_report["rejected"] == {
        "forbidden_host": 0,
        "http_error": 1,
        "timeout": 1,
        "too_large": 2,
        "not_image": 1,
        "damaged": 1,
        "bomb": 1,
        "too_small": 1,
        "duplicate_exact": 1,
        "duplicate_near": 0,
    }
    assert (soccer_report["found"], soccer_report["known"], soccer_report["downloaded"]) == (5, 1, 3)
    assert soccer_report["rejected"]["duplicate_near"] == 1  # photo1, resized, is in train
    assert soccer_report["rejected"]["duplicate_exact"] == 1  # photo3, copied, is in train
    assert summary["totals"]["duplicates"] == 3 and summary["totals"]["short"] == 2
    # Per engine: every URL its data named (full-size and thumbnails, the doodle on google.com),
    # what it handed on, and why it skipped the rest.
    google = summary["engines"]["google"]
    assert (google["searches"], google["used"]) == (2, 26)
    assert google["skipped"] == {"thumbnail_host": (21 + 1) + (6 + 1), "in_dataset": 1}  # + doodles
    assert google["read"] == 21 + 6 + google["skipped"]["thumbnail_host"]
    assert google["blocks"] == {} and summary["engines"]["bing"]["read"] == 0

    # Chromium asked for www.google.com (mapped to the fixture), gave consent once (the cookie
    # held for the second search), scrolled for the second batch and pressed "more results".
    assert web.count("www.google.com", "/search", q="hockey player") == 2
    assert web.count("consent.google.com", "/save") == 1
    assert web.count("www.google.com", "/search", q="soccer player") == 1
    batches = "/_/VisualFrontendUi/data/batchexecute"
    assert web.count("www.google.com", batches, batch="2", q="hockey player") == 1
    assert web.count("www.google.com", batches, batch="3", q="hockey player") == 1
    assert {host for _, host, _ in web.requests} <= {
        "www.google.com",
        "consent.google.com",
        "www.bing.com",
        "duckduckgo.com",
        "127.0.0.1",
    }

    # Nothing outside the dataset changed but its lock beside it (imgclf.locks): empty, and the
    # file naming its holder gone with the run.
    lock, holder = lock_paths(root)
    assert lock.stat().st_size == 0 and not holder.exists()
    with_lock = before | {lock.relative_to(tmp_path).as_posix(): snapshot_of(lock)}
    assert snapshot(tmp_path, skip=root) == with_lock
    assert list(cwd.iterdir()) == []


def test_rerun_tops_up_never_deletes_and_overwrite_starts_over(web, chromium_path, tmp_path):
    web.google["cats"] = GoogleQuery(first=[web.img(f"photo{n}.jpg") for n in range(1, 10)])
    root = tmp_path / "dataset"
    folder = root / "train" / "cats"

    def run(count: int, *overrides: str) -> dict:
        csv = write_csv(tmp_path, f"cats,{count},cats,train\n")
        return scrape(scrape_config(web, chromium_path, csv, root, *overrides))

    assert run(4)["totals"]["downloaded"] == 4
    assert files_under(folder) == [f"cats_{n}.jpg" for n in range(1, 5)]
    (folder / "cats_2.jpg").unlink()  # weeded out in review
    Image.open(io.BytesIO(web.routes["soccer1.jpg"].body)).save(folder / "mine.png")
    (folder / "notes.txt").write_text("keep me")
    (folder / ".cats_9.jpg.x1y2z3.tmp").write_bytes(b"\xff\xd8half a file")  # a killed write
    kept = snapshot(folder, skip=tmp_path / "none")

    summary = run(7)
    report = summary["terms"][0]
    assert (report["had"], report["downloaded"], report["known"]) == (4, 3, 4)
    assert files_under(folder) == [
        "cats_1.jpg",
        "cats_3.jpg",
        "cats_4.jpg",
        "cats_5.jpg",
        "cats_6.jpg",
        "cats_7.jpg",
        "mine.png",
        "notes.txt",
    ]
    for name in ("cats_1.jpg", "cats_3.jpg", "cats_4.jpg", "mine.png", "notes.txt"):
        assert snapshot(folder, skip=tmp_path / "none")[name] == kept[name]
    new_sources = {url_name(r["source_url"]) for r in manifest(root)[4:]}
    assert new_sources == {"photo5.jpg", "photo6.jpg", "photo7.jpg"}  # photo2 stays out

    searches = web.count("www.google.com", "/search")
    summary = run(7)  # complete: Chromium is not even started
    assert summary["terms"][0]["engines"] == {} and summary["totals"]["downloaded"] == 0
    assert web.count("www.google.com", "/search") == searches

    summary = run(2, "overwrite=true")
    assert files_under(folder) == ["cats_1.jpg", "cats_2.jpg", "notes.txt"]
    assert {url_name(r["source_url"]) for r in manifest(root)} == {"photo1.jpg", "photo2.jpg"}


def test_captcha_is_reported_and_backed_off_from(web, chromium_path, tmp_path, caplog):
    web.blocked.update({"blocked cat", "blocked dog"})
    web.bing["blocked cat"] = [web.img(f"extra{n}.jpg") for n in range(1, 7)]
    web.bing["blocked dog"] = [web.img(f"extra{n}.jpg") for n in range(7, 10)]
    csv = write_csv(tmp_path, "blocked cat,5,cats,train\nblocked dog,2,dogs,val\n")
    root = tmp_path / "dataset"

    summary = scrape(scrape_config(web, chromium_path, csv, root))

    cat, dog = summary["terms"]
    assert cat["engines"] == {"google": "blocked (CAPTCHA)", "bing": "ok"}
    assert dog["engines"] == {"google": "resting", "bing": "ok"}
    assert summary["engines"]["google"]["blocks"] == {"CAPTCHA": 1}
    assert summary["engines"]["google"]["resting"] == 1
    assert (cat["downloaded"], dog["downloaded"]) == (5, 2)
    # One request met the CAPTCHA; nothing was retried, and Google was left alone afterwards.
    assert web.count("www.google.com", "/search", q="blocked cat") == 2  # before/after consent
    assert web.count("www.google.com", "/sorry/index") == 1
    assert web.count("www.google.com", "/search", q="blocked dog") == 0
    assert "google refused the search for 'blocked cat'" in caplog.text
    rows = manifest(root)
    assert {r["engine"] for r in rows} == {"bing"}
    assert all(r["page_url"].startswith("https://example.net/article/") for r in rows)
    # Bing's first page has four results; the fifth came from scrolling.
    assert web.count("www.bing.com", "/images/async", q="blocked cat") == 1
    check_rows_match_files(web, root, rows)


def test_unusual_traffic_page_with_status_200_is_a_block(web, chromium_path, tmp_path, caplog):
    web.soft_blocked.add("cats")
    csv = write_csv(tmp_path, "cats,3,cats,train\n")
    summary = scrape(scrape_config(web, chromium_path, csv, tmp_path / "ds", "fallback_engines=[]"))
    assert summary["terms"][0]["engines"] == {"google": "blocked (unusual traffic page)"}
    assert summary["totals"]["short"] == 1
    assert web.count("www.google.com", "/search", q="cats") == 2  # before/after consent
    assert "'unusual traffic' page" in caplog.text
    assert not (tmp_path / "ds").exists()


def test_tile_clicking_when_the_data_has_no_full_size_urls(web, chromium_path, tmp_path):
    web.google["tiles"] = GoogleQuery(
        first=[web.img(n) for n in ("extra11.jpg", "extra12.jpg", "extra13.jpg")],
        tiles_only=True,
    )
    csv = write_csv(tmp_path, "tiles,3,tiles,test\n")
    root = tmp_path / "dataset"

    summary = scrape(scrape_config(web, chromium_path, csv, root, "fallback_engines=[]"))

    assert summary["terms"][0]["downloaded"] == 3
    rows = manifest(root)
    assert {url_name(r["source_url"]) for r in rows} == {"extra11.jpg", "extra12.jpg", "extra13.jpg"}
    assert {r["page_url"] for r in rows} == {f"https://example.org/page/{i}" for i in range(3)}
    assert files_under(root / "test") == [f"tiles/tiles_{n}.jpg" for n in range(1, 4)]


def _script(server, chromium: str, csv: Path, root: Path, tmp_path: Path, *extra: str):
    return [
        sys.executable,
        str(REPO_ROOT / "scripts" / "scrape.py"),
        *cli_overrides(server, chromium, csv, root),
        f"hydra.run.dir='{tmp_path / 'hydra'}'",
        *extra,
    ]


def test_script_reports_bad_input_without_traceback(web, chromium_path, tmp_path):
    csv = write_csv(tmp_path, "cats,5,cats,train\ndogs,5,../dogs,val\n")
    result = subprocess.run(
        _script(web, chromium_path, csv, tmp_path / "ds", tmp_path),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "searchterms.csv line 3: folder_name '../dogs'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize(
    "setting, message",
    [
        ("download.near_duplicate_distance=-1", "download.near_duplicate_distance=-1: use 0"),
        ("download.concurrency=0", "download.concurrency must be positive"),
    ],
)
def test_bad_download_settings_fail_before_any_browser(web, chromium_path, tmp_path, setting, message):
    csv = write_csv(tmp_path, "cats,5,cats,train\n")
    result = subprocess.run(
        _script(web, chromium_path, csv, tmp_path / "ds", tmp_path, setting),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "ds").exists()


def test_killed_run_leaves_whole_files_and_resumes(web, chromium_path, tmp_path):
    names = [f"extra{n}.jpg" for n in range(1, 12)]
    web.google["slow cats"] = GoogleQuery(first=[web.img(n) for n in names])
    web.image_latency_s = 0.4
    csv = write_csv(tmp_path, "slow cats,8,cats,train\n")
    root = tmp_path / "dataset"
    folder = root / "train" / "cats"
    with open(tmp_path / "scrape.log", "wb") as log:
        process = subprocess.Popen(
            _script(web, chromium_path, csv, root, tmp_path, "download.concurrency=2"),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and process.poll() is None:
                if folder.is_dir() and len(list(folder.glob("cats_*.jpg"))) >= 3:
                    break
                time.sleep(0.05)
            assert process.poll() is None, (tmp_path / "scrape.log").read_text()
            process.kill()  # SIGKILL: no cleanup runs
        finally:
            process.wait()

    saved = sorted(folder.glob("cats_*.jpg"))
    assert 3 <= len(saved) < 8
    for path in saved:  # whole images only
        load_image(path)
    rows = manifest(root) if (root / "manifest.jsonl").exists() else []
    assert {r["path"] for r in rows} <= {p.relative_to(root).as_posix() for p in saved}

    web.image_latency_s = 0.0
    summary = scrape(scrape_config(web, chromium_path, csv, root))

    assert summary["terms"][0]["have"] == 8
    assert [p.name for p in sorted(folder.iterdir(), key=lambda p: p.name)] == sorted(
        f"cats_{n}.jpg" for n in range(1, 9)
    )  # no temporary files left either
    rows = manifest(root)
    assert len({r["source_url"] for r in rows}) == len(rows)
    hashes = [perceptual_hash(load_image(p)) for p in folder.iterdir()]
    assert all(hamming(a, b) > 6 for i, a in enumerate(hashes) for b in hashes[i + 1 :])

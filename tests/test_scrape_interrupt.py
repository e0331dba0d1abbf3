"""``scripts/scrape.py`` stopped by SIGTERM or SIGINT while Chromium runs and images download:
nothing outlives it, nothing is half-written, it says so in one line, and a rerun continues."""

from __future__ import annotations

import signal
import sys

import pytest
from conftest import REPO_ROOT

from imgclf.data.images import load_image
from imgclf.scrape.scraper import scrape
from imgclf.testing.processes import interrupt_when
from imgclf.testing.scrape_fixture import GoogleQuery
from imgclf.testing.scrape_fixture.fixtures import (  # noqa: F401 - fixtures
    cli_overrides,
    fixture_server_fixture,
    scrape_config,
    web_fixture,
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_everything_and_a_rerun_continues(web, chromium_path, tmp_path, signum):
    names = [f"extra{n}.jpg" for n in range(1, 13)]
    web.google["slow cats"] = GoogleQuery(first=[web.img(n) for n in names])
    web.image_latency_s = 1.0  # downloads are in flight when the signal lands
    csv = tmp_path / "searchterms.csv"
    csv.write_text("search_term,number_imgs,folder_name,train_val\nslow cats,10,cats,train\n")
    root = tmp_path / "dataset"
    folder = root / "train" / "cats"
    command = [
        sys.executable,
        str(REPO_ROOT / "scripts" / "scrape.py"),
        *cli_overrides(web, chromium_path, csv, root),
        "download.concurrency=2",
        "download.timeout_s=10",
        "download.deadline_s=30",
        f"hydra.run.dir='{tmp_path / 'hydra'}'",
    ]

    def downloading(seen) -> bool:
        chromium = any("chrom" in name.lower() for _, _, name in seen)
        return chromium and folder.is_dir() and bool(list(folder.glob("cats_*.jpg")))

    returncode, seen = interrupt_when(command, tmp_path, downloading, signum, timeout=120, stop_timeout=60)

    stderr = (tmp_path / "err.log").read_text()
    assert returncode == 128 + signum, stderr
    name = signal.Signals(signum).name
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted: stopped by {name}; nothing half-written was left, run the same command "
        "again to continue"
    )
    assert "Traceback" not in stderr + (tmp_path / "out.log").read_text()
    # Chromium (Playwright starts it in a process group of its own), its helpers and the
    # Playwright driver were all running, and none outlived the command.
    assert len(seen) >= 3 and any("chrom" in n.lower() for _, _, n in seen), seen
    saved = sorted(folder.glob("cats_*.jpg"))
    assert 1 <= len(saved) < 10
    assert sorted(p.name for p in root.rglob("*") if p.is_file() and p.name.endswith(".tmp")) == []
    for path in saved:
        load_image(path)  # whole images only

    web.image_latency_s = 0.0
    summary = scrape(scrape_config(web, chromium_path, csv, root))
    assert summary["terms"][0]["had"] == len(saved) and summary["terms"][0]["have"] == 10

"""The search-terms CSV: good files parse; every bad one gives one error naming its line, before
any browser starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO_ROOT
from hydra import compose, initialize_config_dir

from imgclf.errors import ImgclfError
from imgclf.scrape.scraper import scrape
from imgclf.scrape.searchterms import (
    SearchTerm,
    SearchTermsError,
    read_searchterms,
    resolve_searchterms,
)
from imgclf.testing.scrape_fixture.fixtures import HEADER


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "searchterms.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_rows_with_their_line_numbers(tmp_path):
    path = write(
        tmp_path,
        "\ufeff" + HEADER + "hockey player, 100 ,hockey_player,train\n\n"
        '"players, soccer",30,soccer_player,VAL\nice rink,0,rink,test\n',
    )
    assert read_searchterms(path) == [
        SearchTerm(2, "hockey player", 100, "hockey_player", "train"),
        SearchTerm(4, "players, soccer", 30, "soccer_player", "val"),
        SearchTerm(5, "ice rink", 0, "rink", "test"),
    ]


def test_columns_may_come_in_any_order(tmp_path):
    path = write(tmp_path, "folder_name,train_val,search_term,number_imgs\ncats,train,cat,5\n")
    assert read_searchterms(path) == [SearchTerm(2, "cat", 5, "cats", "train")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "searchterms.csv line 1: the file is empty"),
        ("\n\n", "searchterms.csv line 1: the file is empty"),
        (HEADER, "searchterms.csv line 2: no rows after the header"),
        ("search_term,number_imgs,folder_name\nx,1,y\n", "line 1: missing column 'train_val'"),
        ("search_term,number_imgs,folder_name,train_val,url\n", "line 1: unknown column 'url'"),
        (HEADER + "cat,5,cats,train\ndog,many,dogs,train\n", "line 3: number_imgs 'many' is not"),
        (HEADER + "cat,2.5,cats,train\n", "line 2: number_imgs '2.5' is not a whole number"),
        (HEADER + "cat,-3,cats,train\n", "line 2: number_imgs -3 is negative"),
        (HEADER + "cat,,cats,train\n", "line 2: number_imgs '' is not a whole number"),
        (HEADER + "cat,5,cats,training\n", "line 2: train_val 'training' is not a split"),
        (HEADER + "cat,5,cats,train,extra\n", "line 2: 5 fields where the header has 4"),
        (HEADER + ",5,cats,train\n", "line 2: search_term is empty"),
        (HEADER + "cat,5,,train\n", "line 2: folder_name is empty"),
        (HEADER + "cat,5,cats,train\ncat,9,cats,train\n", "line 3: repeats line 2"),
    ],
)
def test_bad_file_names_the_line(tmp_path, text, message):
    with pytest.raises(SearchTermsError, match=message.replace("(", r"\(")) as info:
        read_searchterms(write(tmp_path, text))
    assert isinstance(info.value, ImgclfError)


@pytest.mark.parametrize(
    "folder",
    [
        "../escape",
        "a/b",
        "a\\b",
        "..",
        ".",
        ".hidden",
        "/etc",
        "c:evil",
        "with space",
        "x..y",
        "trailing.",
        "tab\tname",
        "nul\x00name",
        "-",
        "a" * 101,
        "~root",
        "$HOME",
    ],
)
def test_folder_names_that_could_leave_the_dataset_are_refused(tmp_path, folder):
    path = write(tmp_path, HEADER + f'cat,5,cats,train\ndog,5,"{folder}",val\n')
    with pytest.raises(SearchTermsError, match="searchterms.csv line 3: folder_name"):
        read_searchterms(path)


@pytest.mark.parametrize("folder", ["cats", "hockey_player", "class-2", "v1.2", "Émile", "猫"])
def test_plain_folder_names_are_accepted(tmp_path, folder):
    path = write(tmp_path, HEADER + f"cat,5,{folder},train\n")
    assert read_searchterms(path)[0].folder_name == folder


ORIGINAL_HEADER = "search_term,number_imgs,category,set\n"


@pytest.mark.parametrize("header", [HEADER, ORIGINAL_HEADER])
@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_both_headers_in_utf8_and_latin1(tmp_path, caplog, header, encoding):
    """The documented header and the one the original's code read; the original's files were
    latin-1."""
    path = tmp_path / "searchterms.csv"
    path.write_bytes((header + "pétanque,80,target_sports,train\n").encode(encoding))
    assert read_searchterms(path) == [SearchTerm(2, "pétanque", 80, "target_sports", "train")]
    assert ("read it as latin-1" in caplog.text) == (encoding == "latin-1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (ORIGINAL_HEADER + "cat,5,../cats,train\n", "line 2: folder_name '../cats' is not a plain"),
        (ORIGINAL_HEADER + "cat,x,cats,train\n", "line 2: number_imgs 'x' is not a whole number"),
        ("search_term,number_imgs,category,set,url\n", "line 1: unknown column 'url'"),
        ("search_term,number_imgs,category,folder_name,set\n", "line 1: a column is named twice"),
        ("search_term,number_imgs,category\nx,1,y\n", "line 1: missing column 'train_val'"),
    ],
)
def test_original_header_is_checked_as_strictly(tmp_path, text, message):
    path = tmp_path / "searchterms.csv"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(SearchTermsError, match=message.replace("(", r"\(")):
        read_searchterms(path)


def test_bundled_example_by_name_and_missing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hockey = read_searchterms(resolve_searchterms("hockey"))
    assert {(t.folder_name, t.split, t.number_imgs) for t in hockey} == {
        ("hockey_player", "train", 100),
        ("soccer_player", "train", 100),
        ("hockey_player", "val", 30),
        ("soccer_player", "val", 30),
    }
    with pytest.raises(SearchTermsError, match="not found.*searchterms=hockey"):
        resolve_searchterms("data/searchterms.csv")


def test_hockey_experiment_selects_the_bundled_csv():
    """``scripts/scrape.py +experiment=hockey`` scrapes the original's example."""
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf")):
        cfg = compose("scrape", overrides=["+experiment=hockey"])
    assert resolve_searchterms(cfg.searchterms).name == "hockey.csv"
    assert cfg.data.root.endswith("hockey_dataset")


def test_bad_csv_fails_before_the_browser_or_the_dataset(tmp_path):
    """The error is the CSV's even though Chromium is missing, and nothing is created."""
    csv = write(tmp_path, HEADER + "cat,5,cats,train\ndog,5,../../etc,val\n")
    root = tmp_path / "dataset"
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf")):
        cfg = compose(
            "scrape",
            overrides=[
                f"searchterms={csv}",
                f"data.root={root}",
                f"browser.executable_path={tmp_path / 'no-chromium'}",
            ],
        )
    with pytest.raises(SearchTermsError, match="searchterms.csv line 3: folder_name"):
        scrape(cfg)
    assert not root.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["searchterms.csv"]


def test_missing_chromium_from_the_environment_is_reported_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCLF_CHROMIUM", str(tmp_path / "no-chromium"))
    csv = write(tmp_path, HEADER + "cat,5,cats,train\n")
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf")):
        cfg = compose("scrape", overrides=[f"searchterms={csv}", f"data.root={tmp_path / 'dataset'}"])
    assert cfg.browser.executable_path == str(tmp_path / "no-chromium")
    with pytest.raises(ImgclfError, match="Chromium not found .*playwright install chromium"):
        scrape(cfg)
    assert not (tmp_path / "dataset").exists()


def test_missing_playwright_chromium_says_how_to_install_it(tmp_path, monkeypatch):
    """No executable configured and none downloaded: the launch fails with the way out."""
    monkeypatch.delenv("IMGCLF_CHROMIUM", raising=False)
    monkeypatch.setenv("PLAYWRIGHT_BROWSERS_PATH", str(tmp_path / "no-browsers"))
    csv = write(tmp_path, HEADER + "cat,5,cats,train\n")
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf")):
        cfg = compose("scrape", overrides=[f"searchterms={csv}", f"data.root={tmp_path / 'dataset'}"])
    with pytest.raises(ImgclfError, match="Chromium would not start .*IMGCLF_CHROMIUM"):
        scrape(cfg)


def test_unknown_engine_is_a_config_error(tmp_path):
    csv = write(tmp_path, HEADER + "cat,5,cats,train\n")
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf")):
        cfg = compose("scrape", overrides=[f"searchterms={csv}", "engine=altavista"])
    with pytest.raises(ImgclfError, match="unknown search engine 'altavista'"):
        scrape(cfg)

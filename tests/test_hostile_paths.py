"""Issue 24, points 5 and 6: paths read from files stay inside the dataset, one run at a time holds
a dataset or a pipeline, and bad rows or states are clear errors or skipped rows.

Real files in tmp_path throughout; the locks are tested against real processes.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT, compose
from test_review_quarantine import run as review_run
from test_review_quarantine import snapshot

from imgclf.data.folders import list_split
from imgclf.errors import ImgclfError
from imgclf.io import move_no_replace
from imgclf.locks import exclusive, lock_paths
from imgclf.pipeline.state import State, tree_digest
from imgclf.review.quarantine import LOG_NAME, in_quarantine, quarantine_dir, undo
from imgclf.review.scan import dataset_files
from imgclf.scrape.manifest import append_row, read_manifest
from imgclf.scrape.scraper import top_up
from imgclf.scrape.store import DatasetStore, Origin
from imgclf.scrape.weak_classes import weakest_classes

CSV = "search_term,number_imgs,folder_name,train_val\ncats,2,cats,train\n"


def script(name: str, *overrides: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / f"{name}.py"), *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.fixture
def dataset(tmp_path, small_digits_root) -> Path:
    root = tmp_path / "data"
    shutil.copytree(small_digits_root, root)
    return root


def image_bytes(seed: int = 0) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").rotate(seed * 37).save(buffer, format="JPEG")
    return buffer.getvalue()


# -- quarantine undo ---------------------------------------------------------------------------


def write_log(folder: Path, entries: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOG_NAME).write_text("".join(json.dumps(e) + "\n" for e in entries))


def test_a_crafted_quarantine_log_moves_nothing_out_of_its_folders(dataset, tmp_path, caplog):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"  # stands in for /etc/passwd, which a test must not risk
    secret.write_text("keep me")
    folder = quarantine_dir(dataset)
    (folder / "train" / "0").mkdir(parents=True)
    for number in (1, 2, 3):
        (folder / "train" / "0" / f"planted{number}.png").write_bytes(image_bytes(number))
    (folder / "train" / "0" / "link.png").symlink_to(secret)
    rows = [
        ("../outside/secret.txt", "train/0/stolen.txt"),  # out of the quarantine folder
        (str(secret), "train/0/stolen2.txt"),  # an absolute source
        ("train/0/link.png", "train/0/via_link.txt"),  # a link in quarantine that leads out
        ("train/0/planted1.png", "../outside/planted.png"),  # into a folder beside the dataset
        ("train/0/planted2.png", str(outside / "abs.png")),  # an absolute destination
        ("train/0/planted3.png", "/etc/passwd"),
    ]
    write_log(folder, [{"action": "quarantine", "path": p, "quarantined": q} for q, p in rows])
    before, quarantined = snapshot(dataset), snapshot(folder)
    with caplog.at_level("WARNING"):
        assert undo(dataset) == []
    assert snapshot(dataset) == before and snapshot(folder) == quarantined
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"] and secret.read_text() == "keep me"
    messages = [r.getMessage() for r in caplog.records]
    for line in range(1, len(rows) + 1):  # each refused row is named by its line
        assert any(f"{LOG_NAME} line {line}: " in m and "left as it is" in m for m in messages), messages


def test_undo_never_overwrites_a_file_that_appears_while_it_runs(dataset, tmp_path, caplog):
    """Two entries reach one file by two spellings (one through a link inside the dataset): the
    first restore creates it, the second finds it taken at the moment of moving and keeps its copy."""
    (dataset / "train" / "zero").symlink_to(dataset / "train" / "0")
    folder = quarantine_dir(dataset)
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "x.png").write_bytes(b"first")
    (folder / "a" / "y.png").write_bytes(b"second")
    write_log(
        folder,
        [
            {"action": "quarantine", "path": "train/0/back.png", "quarantined": "a/x.png"},
            {"action": "quarantine", "path": "train/zero/back.png", "quarantined": "a/y.png"},
        ],
    )
    with caplog.at_level("WARNING"):
        restored = undo(dataset)
    assert [e["path"] for e in restored] == ["train/0/back.png"]
    assert (dataset / "train" / "0" / "back.png").read_bytes() == b"first"
    assert (folder / "a" / "y.png").read_bytes() == b"second"  # still in quarantine
    assert any(
        "appeared while undo ran" in r.getMessage() and "a/y.png" in r.getMessage() for r in caplog.records
    )
    assert [e["quarantined"] for e in in_quarantine(folder)] == ["a/y.png"]


def test_move_no_replace_keeps_both_files(tmp_path):
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    with pytest.raises(FileExistsError):
        move_no_replace(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "a").read_text() == "a" and (tmp_path / "b").read_text() == "b"
    move_no_replace(tmp_path / "a", tmp_path / "sub" / "c")
    assert not (tmp_path / "a").exists() and (tmp_path / "sub" / "c").read_text() == "a"


@pytest.mark.parametrize("code", [errno.EPERM, errno.EOPNOTSUPP])
def test_move_no_replace_without_hard_links_still_never_overwrites(tmp_path, monkeypatch, code):
    """On a file system without hard links (FAT, exFAT, some shares) link() fails with EPERM or
    EOPNOTSUPP; the move falls back to an exclusive create and a copy, with the same guarantee."""

    def no_links(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", no_links)
    (tmp_path / "a").write_bytes(b"a" * 3_000_000)
    (tmp_path / "b").write_text("b")
    with pytest.raises(FileExistsError):
        move_no_replace(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b").read_text() == "b" and (tmp_path / "a").stat().st_size == 3_000_000
    move_no_replace(tmp_path / "a", tmp_path / "sub" / "c")
    assert not (tmp_path / "a").exists() and (tmp_path / "sub" / "c").read_bytes() == b"a" * 3_000_000
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["c"]


def test_quarantine_and_undo_still_round_trip_with_bad_log_lines(dataset, tmp_path, caplog):
    review_run(dataset, tmp_path, "fix=quarantine", "fix_reasons=[tiny]")  # nothing tiny: no moves
    folder = quarantine_dir(dataset)
    target = next((dataset / "train" / "7").iterdir())
    relative = target.relative_to(dataset).as_posix()
    (folder / relative).parent.mkdir(parents=True, exist_ok=True)
    shutil.move(target, folder / relative)
    lines = [
        "not json",
        "[" * 100_000,
        json.dumps(["a list"]),
        json.dumps({"action": "quarantine", "path": 3}),
    ]
    lines.append(json.dumps({"action": "quarantine", "path": relative, "quarantined": relative}))
    (folder / LOG_NAME).write_text("\n".join(lines) + "\n")
    with caplog.at_level("WARNING"):
        assert [e["path"] for e in undo(dataset)] == [relative]
    assert target.is_file()
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert all(f"line {n}: not a quarantine log entry" in warned for n in (1, 2, 3, 4))


# -- class names and links -----------------------------------------------------------------------


def test_a_metrics_file_cannot_name_a_class_outside_the_dataset(tmp_path):
    metrics = tmp_path / "metrics.json"
    per_class = {"../../x": {"recall": 0.1}, "fine": {"recall": 0.9}}
    metrics.write_text(json.dumps({"per_class": per_class}))
    with pytest.raises(ImgclfError, match=r"class '\.\./\.\./x' from .*metrics.json is not a plain folder"):
        weakest_classes(metrics, 1)
    cfg = compose("scrape", [f"data.root={tmp_path / 'data'}"], output_dir=tmp_path / "run")
    with pytest.raises(ImgclfError, match="not a plain folder name"):
        top_up(cfg, ["ok", "a/../../b"], 1)
    assert not (tmp_path / "data").exists()

    csv = tmp_path / "terms.csv"
    csv.write_text(CSV)
    result = script(
        "scrape",
        f"searchterms={csv}",
        f"data.root={tmp_path / 'data'}",
        f"top_up.from={metrics}",
        "top_up.weakest=1",
        f"hydra.run.dir={tmp_path / 'h'}",
    )
    assert "'../../x'" in one_line_error(result)
    assert not (tmp_path / "data").exists() and not (tmp_path.parent / "x").exists()


def test_links_out_of_the_dataset_are_skipped_with_a_note(dataset, tmp_path, caplog):
    outside = tmp_path / "outside"
    shutil.copytree(dataset / "train" / "7", outside / "7")
    outside_file = next((outside / "7").iterdir())
    (dataset / "train" / "0" / "away.png").symlink_to(outside_file)
    (dataset / "train" / "eight").symlink_to(outside / "7", target_is_directory=True)
    inner = next((dataset / "train" / "1").iterdir())
    (dataset / "train" / "0" / "inner.png").symlink_to(inner)  # a link inside the dataset is fine
    with caplog.at_level("WARNING"):
        listing = list_split(dataset, "train")
    assert listing.classes == ["0", "1", "7"]
    names = [p.name for p in listing.files["0"]]
    assert "inner.png" in names and "away.png" not in names
    assert any("skipped 2 link(s) that lead out of the dataset" in r.getMessage() for r in caplog.records)
    layout, ignored = dataset_files(dataset)
    every = [p for files in layout.values() for paths in files.values() for p in paths] + ignored
    assert all(p.resolve().is_relative_to(dataset.resolve()) for p in every)

    store = DatasetStore(dataset, near_duplicate_distance=0)
    assert store.count("train", "0") == len(list((dataset / "train" / "0").iterdir())) - 1
    assert store.count("train", "eight") == 0
    from imgclf.scrape.store import PreparedImage

    image = PreparedImage(image_bytes(), "ab" * 32, "cd" * 32, 0, 256, 256)
    with pytest.raises(ImgclfError, match="link that leads out of the dataset"):
        store.save("train", "eight", image, Origin("t", "google", "u", "u", None))
    assert sorted(p.name for p in (outside / "7").iterdir()) == sorted(
        p.name for p in (dataset / "train" / "7").iterdir()
    )
    # The pipeline's fingerprint of the dataset reads the links, not what they point to.
    first = tree_digest(dataset)
    os.utime(outside_file, (1, 1))
    assert tree_digest(dataset) == first

    (dataset / "val").rename(tmp_path / "val_elsewhere")
    (dataset / "val").symlink_to(tmp_path / "val_elsewhere", target_is_directory=True)
    with pytest.raises(ImgclfError, match=r"val is a link that leads out of the dataset"):
        list_split(dataset, "val")


# -- locks -------------------------------------------------------------------------------------


def test_a_second_scrape_of_a_dataset_says_who_holds_it(tmp_path):
    csv = tmp_path / "terms.csv"
    csv.write_text(CSV)
    root = tmp_path / "data"
    with exclusive(root, "the dataset"):
        result = script(
            "scrape", f"searchterms={csv}", f"data.root={root}", f"hydra.run.dir={tmp_path / 'h'}"
        )
    error = one_line_error(result)
    assert f"the dataset {root} is in use by another run" in error
    assert f"pid {os.getpid()} on {socket.gethostname()}, started 20" in error and "pytest" in error
    assert not (root / "manifest.jsonl").exists()
    assert not lock_paths(root)[1].exists()  # who held it is forgotten with the lock


def test_a_second_pipeline_on_one_model_folder_says_who_holds_it(tmp_path):
    csv = tmp_path / "terms.csv"
    csv.write_text(CSV)
    state = tmp_path / "model" / "pipeline" / "state.json"
    with exclusive(state, "the pipeline state"):
        result = script(
            "pipeline",
            f"searchterms={csv}",
            f"data.root={tmp_path / 'data'}",
            f"paths.model_dir={tmp_path / 'model'}",
            f"hydra.run.dir={tmp_path / 'h'}",
        )
    error = one_line_error(result)
    assert f"the pipeline state {state} is in use by another run (pid {os.getpid()}" in error
    assert not (tmp_path / "data").exists() and not state.exists()


def test_a_lock_whose_holder_was_killed_is_free(tmp_path):
    root = tmp_path / "data"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from imgclf.locks import exclusive\n"
            "with exclusive(sys.argv[1], 'the dataset'):\n    time.sleep(120)",
            str(root),
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        deadline = time.monotonic() + 60
        while not lock_paths(root)[1].exists():
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(ImgclfError, match=f"pid {holder.pid} on"):
            with exclusive(root, "the dataset"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with exclusive(root, "the dataset"):  # no clean-up ran, yet the lock went with the process
        assert json.loads(lock_paths(root)[1].read_text())["pid"] == os.getpid()


def test_two_stores_on_one_dataset_never_take_the_same_file_name(tmp_path):
    from imgclf.scrape.downloader import DownloadSettings, prepare

    first, second = (DatasetStore(tmp_path, near_duplicate_distance=0) for _ in range(2))
    images = [prepare(image_bytes(seed), DownloadSettings()) for seed in (1, 2)]
    a = first.save("train", "cats", images[0], Origin("t", "google", "u1", "u1", None))
    b = second.save("train", "cats", images[1], Origin("t", "google", "u2", "u2", None))
    assert a.name == "cats_1.jpg" and b.name == "cats_2.jpg"
    rows = read_manifest(tmp_path / "manifest.jsonl")
    assert [r["path"] for r in rows] == ["train/cats/cats_1.jpg", "train/cats/cats_2.jpg"]
    import hashlib

    for row in rows:
        assert hashlib.sha256((tmp_path / row["path"]).read_bytes()).hexdigest() == row["sha256"]


# -- bad rows and states -------------------------------------------------------------------------


def test_bad_manifest_rows_are_skipped_with_a_warning_naming_the_line(tmp_path, caplog):
    path = tmp_path / "manifest.jsonl"
    good = {"path": "train/a/a_1.jpg", "sha256": "ab" * 32, "phash": "0f" * 8, "width": 3, "bytes": 10}
    bad = [
        {**good, "width": "wide"},  # wrong type
        {"sha256": "ab" * 32},  # no path
        {**good, "bytes": "12kB"},  # not a number
        {**good, "sha256": "not-a-hash"},
        {**good, "phash": "zz"},
        {**good, "source_url": ["a", "list"]},
        {**good, "path": "../../etc/passwd"},
        {**good, "path": "/etc/passwd"},
    ]
    for row in [good, *bad]:
        path.open("a").write(json.dumps(row) + "\n")
    with path.open("ab") as handle:
        handle.write(b"[" * 100_000 + b"\n" + b'{"path": "\xff\xfe"}\n')
    with caplog.at_level("WARNING"):
        rows = read_manifest(path)
    assert rows == [good]
    messages = " ".join(r.getMessage() for r in caplog.records)
    for line in range(2, len(bad) + 4):
        assert f"manifest.jsonl line {line}: " in messages
    assert (
        "width 'wide' is not a whole number" in messages and "sha256 'not-a-hash' is not a hash" in messages
    )
    store = DatasetStore(tmp_path, near_duplicate_distance=6)  # loads without a traceback
    assert store.count("train", "a") == 0
    append_row(path, good)
    assert len(read_manifest(path)) == 2


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([], "'stages' is a list, not a mapping"),
        ({"1.scrape": "done"}, "stage '1.scrape' is a str, not a record"),
        ({"1.scrape": {"status": "finished", "config": "x"}}, "has status 'finished'"),
        ({"1.scrape": {"status": "done", "config": "x", "after": []}}, "'after' is a list"),
        (
            {"1.train": {"status": "done", "config": "x", "after": {}, "seconds": "long"}},
            "'seconds' is a str",
        ),
    ],
)
def test_pipeline_states_of_the_wrong_shape_are_clear_errors(tmp_path, stages, message):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"format": "imgclf.pipeline/1", "stages": stages}))
    with pytest.raises(ImgclfError, match=f"{message}.*delete the file to run every stage again"):
        State(path)


def test_the_pipeline_script_reports_a_bad_state_in_one_line(tmp_path):
    csv = tmp_path / "terms.csv"
    csv.write_text(CSV)
    state = tmp_path / "model" / "pipeline" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"format": "imgclf.pipeline/1", "stages": {"1.scrape": "done"}}))
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 100_000)
    result = script(
        "pipeline",
        f"searchterms={csv}",
        f"data.root={tmp_path / 'data'}",
        f"paths.model_dir={tmp_path / 'model'}",
        f"hydra.run.dir={tmp_path / 'h'}",
    )
    assert "stage '1.scrape' is a str" in one_line_error(result)
    state.write_text("[" * 100_000)
    with pytest.raises(ImgclfError, match="cannot be read"):
        State(state)


def test_deeply_nested_json_in_a_result_page_is_not_data(tmp_path):
    from imgclf.scrape.engines import bing, duckduckgo, google
    from imgclf.scrape.engines.containers import json_values

    deep = "[" * 100_000
    page = f"<script>var data = {deep};</script><script>var m = {json.dumps(['x'])};</script>"
    assert list(json_values(deep)) == []
    assert list(json_values(page)) == [["x"]]
    assert list(json_values(")]}'\n" + deep)) == []
    assert google.extract_hits(page, ()) == []
    assert google.related_searches(page, "cats") == []
    assert duckduckgo.parse_results(deep, ()) == ([], None)
    assert duckduckgo.suggestions(deep, "cats") == []
    assert bing.tile_hits([deep], ()) == []
    metrics = tmp_path / "metrics.json"
    metrics.write_text(deep)
    with pytest.raises(ImgclfError, match="is not an evaluation's metrics.json"):
        weakest_classes(metrics, 1)


def test_a_stage_result_of_another_shape_is_a_clear_error_in_the_summary(tmp_path):
    """A hand-edited state whose records pass their checks but whose results do not have the shape
    imgclf writes: the summary says which file, not a traceback."""
    from imgclf.pipeline.runner import Pipeline

    csv = tmp_path / "terms.csv"
    csv.write_text(CSV)
    model_dir = tmp_path / "model"
    state = model_dir / "pipeline" / "state.json"
    state.parent.mkdir(parents=True)
    record = {"status": "done", "config": "x", "after": {}, "seconds": 1.0}
    stages = {"1.eval": {**record, "result": {"val": {"accuracy": 0.5, "per_class": ["not", "a", "map"]}}}}
    state.write_text(json.dumps({"format": "imgclf.pipeline/1", "stages": stages}))
    overrides = [f"searchterms={csv}", f"data.root={tmp_path / 'data'}", f"paths.model_dir={model_dir}"]
    pipeline = Pipeline(compose("pipeline", overrides, output_dir=tmp_path / "run"))
    with pytest.raises(ImgclfError, match=r"state.json: a stage's result is not what imgclf writes.*delete"):
        pipeline.summary()

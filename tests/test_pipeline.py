"""``scripts/pipeline.py`` end to end, in real processes: the scraper in real Chromium against the
local fixture, the review, an Optuna sweep, training and evaluation for real (two classes, a few
64 px images, one epoch of MobileNetV3 from scratch), the loop that tops up the weakest class from
the engine's related searches, signals, and a rerun that skips what is done."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, compose

from imgclf.config import override
from imgclf.models.checkpoint import read_model
from imgclf.testing.processes import interrupt_when
from imgclf.testing.scrape_fixture import GoogleQuery
from imgclf.testing.scrape_fixture.fixtures import TEST_OVERRIDES, fixture_server_fixture, web_fixture  # noqa: F401

ORIGINAL_HEADER = "search_term,number_imgs,category,set\n"
TRAIN = [
    "data.image_size=64",
    "data.augment=false",
    "data.num_workers=0",
    "data.batch_size=16",
    "model.optimizer.lr=1e-3",
    "trainer.max_epochs=1",
    "callbacks=none",
    "logger=none",
]


def hydra_list(items: list[str]) -> str:
    return "[" + ",".join('"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"' for item in items) + "]"


def pipeline_command(
    web, chromium: str, csv: Path, tmp_path: Path, *extra: str, scrape: tuple[str, ...] = ()
) -> list[str]:
    """scripts/pipeline.py pointed at the fixture, with everything small."""
    scrape = [
        f"browser.executable_path='{chromium}'",
        f"browser.host_resolver_rules='{web.host_resolver_rules()}'",
        f"download.verify='{web.cert}'",
        "fallback_engines=[]",
        *TEST_OVERRIDES,
        *scrape,
    ]
    return [
        sys.executable,
        str(REPO_ROOT / "scripts" / "pipeline.py"),
        f"searchterms='{csv}'",
        f"paths.data_dir='{tmp_path / 'data'}'",
        f"paths.log_dir='{tmp_path / 'logs'}'",
        "model.backbone=mobilenet_v3_large",
        "model.pretrained=false",
        f"scrape.overrides={hydra_list(scrape)}",
        f"review.overrides={hydra_list(['labels.features=pixels', 'model.num_workers=0'])}",
        f"train.overrides={hydra_list(TRAIN)}",
        f"eval.overrides={hydra_list(['num_workers=0'])}",
        *extra,
    ]


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900, check=False)


def state(tmp_path: Path) -> dict:
    path = tmp_path / "data" / "trained_model" / "pipeline" / "state.json"
    return json.loads(path.read_text())["stages"]


def rows_after(stdout: str, title: str) -> list[list[str]]:
    """The cells of the table rows printed after the (last) ``title``."""
    assert title in stdout, stdout[-3000:]
    lines = stdout[stdout.rindex(title) :].splitlines()
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in lines
        if line.startswith("│")
    ]


def stage_rows(stdout: str) -> dict[str, str]:
    """``{"1.scrape": "ran", ...}`` from the summary's first table."""
    rows = {}
    for cells in rows_after(stdout, "Pipeline summary"):
        if len(cells) == 5 and cells[0].isdigit():
            rows[f"{cells[0]}.{cells[1]}"] = cells[2]
    return rows


def table_row(stdout: str, title: str, first_cell: str) -> list[str]:
    for cells in rows_after(stdout, title):
        if cells[0] == first_cell:
            return cells[1:]
    raise AssertionError(f"no row {first_cell!r} after {title!r} in:\n{stdout[-4000:]}")


def images(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*.jpg")}


def test_two_rounds_from_an_original_latin1_csv_without_val(web, chromium_path, tmp_path):
    """Round 1 from the original tool's CSV (latin-1, ``pétanque``), a dataset with train/ and test/
    but no val/; then rounds=2: round 1 is skipped and the weakest class gets new train images from
    the related searches Google suggests, never one already in the dataset."""
    img = web.img
    web.google["pétanque"] = GoogleQuery(
        first=[img(f"photo{n}.jpg") for n in range(1, 7)], related=["pétanque boules"]
    )
    web.google["bowling"] = GoogleQuery(
        first=[img(f"soccer{n}.jpg") for n in range(1, 6)] + [img("extra1.jpg")], related=["bowling alley"]
    )
    web.google["pétanque boules"] = GoogleQuery(
        first=[img("photo1.jpg")] + [img(f"extra{n}.jpg") for n in (2, 3, 4)]
    )
    web.google["bowling alley"] = GoogleQuery(
        first=[img("soccer1.jpg")] + [img(f"extra{n}.jpg") for n in (5, 6, 7)]
    )
    csv = tmp_path / "searchterms.csv"
    csv.write_bytes(
        (
            ORIGINAL_HEADER
            + "pétanque,4,pétanque,train\npétanque,2,pétanque,test\n"
            + "bowling,4,bowling,train\nbowling,2,bowling,test\n"
        ).encode("latin-1")
    )
    root = tmp_path / "data" / "image_dataset"
    model_dir = tmp_path / "data" / "trained_model"
    # sized by the learning curve (the default), between 2 and 2 images: what the fixture has
    command = pipeline_command(web, chromium_path, csv, tmp_path, "loop.extra_images=2", "loop.max_images=2")

    first = run(command, tmp_path)

    assert first.returncode == 0, first.stderr[-4000:]
    output = first.stdout + first.stderr
    assert "read it as latin-1" in output
    assert "Traceback" not in output
    assert stage_rows(first.stdout) == {
        "1.scrape": "ran",
        "1.review": "ran",
        "1.train": "ran",
        "1.eval": "ran",
    }
    assert sorted(p.relative_to(root).as_posix() for p in root.glob("*/*")) == [
        "test/bowling",
        "test/pétanque",
        "train/bowling",
        "train/pétanque",
    ]
    record = read_model(model_dir / "model.ckpt")
    assert record["classes"] == ["bowling", "pétanque"]
    held_out = record["val_split"]["files"]
    assert sorted(name.split("/")[0] for name in held_out) == ["bowling", "pétanque"]  # 1 of 4 each
    assert (
        json.loads(next((tmp_path / "logs").glob("pipeline/runs/*/round1_train/val_split.json")).read_text())[
            "files"
        ]
        == held_out
    )
    # the summary: images per class and split (val held out of train), accuracies, how to serve
    assert table_row(first.stdout, "Images per class", "pétanque") == ["3", "1", "2"]
    assert table_row(first.stdout, "Images per class", "total") == ["6", "2", "4"]
    round1 = state(tmp_path)
    val_accuracy = round1["1.eval"]["result"]["val"]["accuracy"]
    test_accuracy = round1["1.eval"]["result"]["test"]["accuracy"]
    assert table_row(first.stdout, "Accuracy", "round 1") == [f"{val_accuracy:.4f}", f"{test_accuracy:.4f}"]
    assert f"Serve it: python serve.py ckpt_path={model_dir / 'model.ckpt'}" in first.stdout
    trained = round1["1.train"]["result"]  # which network and weights, said in the summary
    assert f"Backbone: {trained['backbone']}, ImageNet weights: {trained['weights']}" in first.stdout
    assert trained["backbone"] == record["architecture"]["backbone"]["name"]
    metrics = json.loads((model_dir / "pipeline" / "round1" / "eval_val" / "metrics.json").read_text())
    assert metrics["num_images"] == 2  # the held-out split, as eval.py reads it
    # the model the pipeline leaves carries its card, its intervals and its heatmaps
    card = (model_dir / "model_card.md").read_text()
    interval = metrics["accuracy_interval"]
    assert f"{metrics['accuracy']:.4f} (95% interval {interval['low']:.4f}-{interval['high']:.4f}" in card
    assert "pétanque" in card and "## Where the images came from" in card
    assert (model_dir / "pipeline" / "round1" / "eval_val" / "top_losses_cam.png").is_file()
    recall = {name: values["recall"] for name, values in metrics["per_class"].items()}
    weakest = min(recall, key=lambda name: (recall[name], name))
    other = ({"bowling", "pétanque"} - {weakest}).pop()
    before = images(root)
    searches = {q: web.count("www.google.com", "/search", q=q) for q in ("pétanque", "bowling")}

    second = run([*command, "rounds=2"], tmp_path)

    assert second.returncode == 0, second.stderr[-4000:]
    # round 1's val evaluation runs again, now with its learning curve, which sizes the top-up
    assert stage_rows(second.stdout) == {
        "1.scrape": "skipped",
        "1.review": "skipped",
        "1.train": "skipped",
        "1.eval": "ran",
        "2.top_up": "ran",
        "2.review": "ran",
        "2.train": "ran",
        "2.eval": "ran",
    }
    records = state(tmp_path)
    for key in ("1.scrape", "1.review", "1.train"):
        assert records[key] == round1[key]
    assert records["1.eval"]["result"]["val"]["per_class"] == round1["1.eval"]["result"]["val"]["per_class"]
    curve = json.loads((model_dir / "pipeline" / "round1" / "eval_val" / "metrics.json").read_text())
    assert [row["fraction"] for row in curve["learning_curve"]["rows"]] == [0.25, 0.5, 0.75, 1.0]
    sizing = records["2.top_up"]["result"]["classes"][weakest]["sizing"]
    assert sizing["extra"] == 2 and sizing["recall"] is not None and sizing["why"]
    assert table_row(second.stdout, "Top-up", weakest)[-1].startswith(f"recall {sizing['recall']:.2f}")
    # two new train images of the weakest class, found through its related search; nothing else
    # touched (the related search's first result is already in the dataset and was not taken)
    after = images(root)
    assert {k: v for k, v in after.items() if k in before} == before
    added = sorted(set(after) - set(before))
    assert added == [f"train/{weakest}/{weakest}_{n}.jpg" for n in (5, 6)]
    rows = {}
    for line in (root / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["path"]] = row
    related = {"pétanque": "pétanque boules", "bowling": "bowling alley"}[weakest]
    assert {rows[path]["search_term"] for path in added} == {related}
    # the weakest class's own phrasing was asked again (all its results were in the dataset), the
    # other class's not: round 1's scrape did not run again
    assert web.count("www.google.com", "/search", q=weakest) > searches[weakest]
    assert web.count("www.google.com", "/search", q=other) == searches[other]
    assert records["2.top_up"]["result"]["classes"][weakest]["added"] == 2
    # round 2's review saw the val split the round-1 model held out of train/
    findings = json.loads((model_dir / "pipeline" / "round2" / "review" / "findings.json").read_text())
    assert findings["splits"] == ["train", "val", "test"]
    assert findings["counts"]["val"] == {"bowling": 1, "pétanque": 1}
    # the summary: recall per class before and after, the top-up marked, the weakest classes
    round2 = records["2.eval"]["result"]["val"]["per_class"]
    assert table_row(second.stdout, "Recall per class", weakest) == [
        f"{recall[weakest]:.4f}",
        f"{round2[weakest]['recall']:.4f} (+2)",
    ]
    assert table_row(second.stdout, "Recall per class", other) == [
        f"{recall[other]:.4f}",
        f"{round2[other]['recall']:.4f}",
    ]
    assert "Weakest classes on val: " in second.stdout
    assert (
        read_model(model_dir / "model.ckpt")["metrics"]["val/acc"] == records["2.train"]["result"]["val/acc"]
    )


def test_signals_stop_everything_and_the_same_command_continues(web, chromium_path, tmp_path):
    """SIGINT while Chromium scrapes, then SIGTERM while a sweep trial trains: nothing outlives the
    command, one line says so, the status is 128 + the signal; the same command then continues,
    skipping the scrape and the review it finished."""
    img = web.img
    web.google["pétanque"] = GoogleQuery(first=[img(f"photo{n}.jpg") for n in range(1, 7)])
    web.google["bowling"] = GoogleQuery(
        first=[img(f"soccer{n}.jpg") for n in range(1, 6)] + [img("extra1.jpg")]
    )
    csv = tmp_path / "searchterms.csv"
    csv.write_text(
        ORIGINAL_HEADER
        + "pétanque,5,pétanque,train\npétanque,1,pétanque,val\n"
        + "bowling,5,bowling,train\nbowling,1,bowling,val\n",
        encoding="utf-8",
    )
    root = tmp_path / "data" / "image_dataset"
    command = pipeline_command(
        web, chromium_path, csv, tmp_path, "tune.n_trials=1", scrape=("download.concurrency=2",)
    )

    def interrupt(signum: int, ready) -> tuple[int, str, set]:
        code, seen = interrupt_when(command, tmp_path, ready, signum)
        stderr = (tmp_path / "err.log").read_text()
        assert "Traceback" not in stderr + (tmp_path / "out.log").read_text()
        return code, stderr.strip().splitlines()[-1], seen

    web.image_latency_s = 1.0  # downloads are in flight when the signal lands
    folder = root / "train" / "pétanque"

    def scraping(seen) -> bool:
        return any("chrom" in name.lower() for _, _, name in seen) and bool(list(folder.glob("*.jpg")))

    code, last_line, seen = interrupt(signal.SIGINT, scraping)
    assert code == 130
    assert last_line == (
        "interrupted: stopped by SIGINT during round 1 scrape; finished stages are kept, "
        "run the same command again to continue"
    )
    assert any("chrom" in name.lower() for _, _, name in seen)
    assert 1 <= len(list(folder.glob("*.jpg"))) < 5
    assert state(tmp_path)["1.scrape"]["status"] == "started"

    web.image_latency_s = 0.0
    trials = tmp_path / "logs" / "train" / "multiruns"

    def sweeping(seen) -> bool:
        return any(name.startswith("python") for _, _, name in seen) and bool(list(trials.glob("*/0")))

    code, last_line, seen = interrupt(signal.SIGTERM, sweeping)
    assert code == 143
    assert last_line == (
        "interrupted: stopped by SIGTERM during round 1 tune; finished stages are kept, "
        "run the same command again to continue"
    )
    assert {record["status"] for record in state(tmp_path).values()} == {"done", "started"}
    assert state(tmp_path)["1.tune"]["status"] == "started"
    searches = len(web.requests)

    third = run(command, tmp_path)

    assert third.returncode == 0, third.stderr[-4000:]
    assert stage_rows(third.stdout) == {
        "1.scrape": "skipped",
        "1.review": "skipped",
        "1.tune": "ran",
        "1.train": "ran",
        "1.eval": "ran",
    }
    assert len(web.requests) == searches  # no browser, no download
    best = state(tmp_path)["1.tune"]["result"]
    assert best["trials"] == 2  # the killed trial (failed) and the one that finished
    model = read_model(tmp_path / "data" / "trained_model" / "model.ckpt")
    assert model["hparams"]["head"]["hidden_size"] == best["params"]["model.head.hidden_size"]
    assert model["val_split"] is None  # the dataset has val/


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["searchterms=missing.csv"], "error: search terms file missing.csv not found"),
        (["rounds=0"], "error: rounds=0: give a whole number of at least 1"),
        (["loop.metric=accuracy"], "error: loop.metric=accuracy: use recall or f1"),
        (["review.fix_reasons=[blurry]"], "error: fix_reasons has unknown reason(s) blurry"),
        (
            ['train.overrides=["trainer.max_epoch=3"]'],
            "error: the train stage's settings do not compose: Could not override 'trainer.max_epoch'.",
        ),
    ],
)
def test_bad_settings_stop_before_any_stage(tmp_path, overrides, message):
    csv = tmp_path / "searchterms.csv"
    csv.write_text(ORIGINAL_HEADER + "cat,2,cat,train\n")
    result = run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "pipeline.py"),
            f"searchterms={csv}",
            f"paths.data_dir={tmp_path / 'data'}",
            f"paths.log_dir={tmp_path / 'logs'}",
            *overrides,
        ],
        tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


def test_override_values_survive_any_path(tmp_path):
    """The shared keys reach every stage's config whatever characters a path holds (and the
    sweeper's and best_hparams.yaml's values their trials and the next training unchanged)."""
    for path in [
        "data/x_y.z",
        "/tmp/a b,c=d",
        "/tmp/it's",
        "C:\\data\\",
        "/tmp/x\\'y",
        "/tmp/[x]{y}",
        "true",
        "1e3",
    ]:
        cfg = compose("eval", [override("data.root", path)])
        assert cfg.data.root == path
    for value in [True, False, None, 0, 7, 1e-05, 0.25, "1e-3", "true", "null", "it's", 'say "x"']:
        cfg = compose("eval", [override("data.root", value)])
        assert cfg.data.root == value and type(cfg.data.root) is type(value)

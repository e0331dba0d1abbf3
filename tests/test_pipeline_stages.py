"""The pipeline's stage objects and its skip logic, on real composed configs and real state files,
without running a stage's work (test_pipeline.py runs the whole pipeline in real processes)."""

from __future__ import annotations

import re

import pytest
from conftest import compose

from imgclf.errors import ImgclfError
from imgclf.pipeline import Pipeline
from imgclf.pipeline.settings import PipelineSettings
from imgclf.pipeline.stages import (
    EvalStage,
    Prepared,
    ReviewStage,
    ScrapeStage,
    TopUpStage,
    TrainStage,
    TuneStage,
)
from imgclf.pipeline.state import State

CSV = "search_term,number_imgs,category,set\ncat,2,cat,train\ndog,2,dog,train\n"


def pipeline(tmp_path, *overrides: str) -> Pipeline:
    csv = tmp_path / "terms.csv"
    if not csv.exists():
        csv.parent.mkdir(parents=True, exist_ok=True)
        csv.write_text(CSV)
    settings = [
        f"searchterms={csv}",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.log_dir={tmp_path / 'logs'}",
        "model.backbone=mobilenet_v3_large",
        "model.pretrained=false",
        *overrides,
    ]
    return Pipeline(compose("pipeline", settings, output_dir=tmp_path / "run"))


def done(prepared: Prepared, **extra) -> dict:
    return {"status": "done", "config": prepared.digest, "after": prepared.watch(), "outcome": "ok", **extra}


def test_the_plan_lists_the_stages_explicitly(tmp_path):
    names = [(s.round, s.name) for s in pipeline(tmp_path).plan()]
    assert names == [(1, "scrape"), (1, "review"), (1, "train"), (1, "eval")]
    plan = pipeline(tmp_path, "rounds=3", "tune.n_trials=4").plan()
    assert [type(s) for s in plan] == [
        ScrapeStage, ReviewStage, TuneStage, TrainStage, EvalStage,
        TopUpStage, ReviewStage, TrainStage, EvalStage,
        TopUpStage, ReviewStage, TrainStage, EvalStage,
    ]  # fmt: skip
    assert [s.label for s in plan[5:7]] == ["round 2 top-up", "round 2 review"]
    assert len({s.key for s in plan}) == len(plan)


@pytest.mark.parametrize("kind", [ScrapeStage, ReviewStage, TrainStage, EvalStage, TuneStage])
def test_a_stage_is_skipped_only_when_done_with_the_same_settings_and_files(tmp_path, kind):
    run = pipeline(tmp_path, "tune.n_trials=2")
    stage = kind(1, run.context)
    prepared = stage.prepare()
    record = done(prepared)
    assert stage.finished(record, prepared, history=False)
    assert not stage.finished(None, prepared, history=False), "never ran"
    for status in ("started", "failed"):
        assert not stage.finished({**record, "status": status}, prepared, history=False)
    assert not stage.finished({**record, "config": "other settings"}, prepared, history=False)
    assert not stage.finished({**record, "after": {"dataset": "changed"}}, prepared, history=False)


@pytest.mark.parametrize(
    ("kind", "reruns"),
    [(ScrapeStage, True), (TuneStage, True), (ReviewStage, False), (TrainStage, False), (EvalStage, False)],
)
def test_in_a_round_before_the_latest_only_scrape_and_tune_rerun_on_new_settings(tmp_path, kind, reruns):
    """History: the top-ups changed the dataset since, so its stages stay done whatever their
    files say; but a new CSV is scraped and new tuning settings are tuned."""
    run = pipeline(tmp_path, "tune.n_trials=2")
    stage = kind(1, run.context)
    prepared = stage.prepare()
    changed_files = {**done(prepared), "after": {"dataset": "changed since"}}
    assert stage.finished(changed_files, prepared, history=True)
    new_settings = {**done(prepared), "config": "older settings"}
    assert stage.finished(new_settings, prepared, history=True) is not reruns
    assert not stage.finished({**done(prepared), "status": "started"}, prepared, history=True)


def test_the_settings_digest_follows_what_the_stage_does(tmp_path):
    """A stage's digest is its composed settings: changed by its own overrides and the shared keys,
    not by the run folder or, for training, by resume (a rerun continues or starts over either way)."""

    def digest(kind, *overrides: str, folder=tmp_path) -> str:
        return kind(1, pipeline(folder, *overrides).context).prepare().digest

    base = digest(TrainStage)
    assert digest(TrainStage) == base
    assert digest(TrainStage, 'train.overrides=["resume=false"]') == base
    assert digest(TrainStage, 'train.overrides=["trainer.max_epochs=2"]') != base
    assert digest(TrainStage, "seed=7") != base
    assert digest(TrainStage, folder=tmp_path / "elsewhere") != base, "another data folder, another dataset"
    review = digest(ReviewStage)
    assert digest(ReviewStage, "review.fix=null") != review
    assert digest(ReviewStage, 'train.overrides=["trainer.max_epochs=2"]') == review


def test_eval_prepares_both_splits_and_evaluates_those_the_dataset_has(tmp_path):
    run = pipeline(tmp_path)
    stage = EvalStage(1, run.context)
    prepared = stage.prepare()
    assert set(prepared.configs) == {"val", "test"}
    assert prepared.configs["test"].split == "test"
    assert prepared.configs["val"].report_dir == str(run.context.metrics_path(1, "val").parent)
    assert stage.splits() == ["val"]
    (run.context.root / "test").mkdir(parents=True)
    assert stage.splits() == ["val", "test"]
    assert stage.prepare().digest == prepared.digest, "the settings are the same; the dataset is watched"


def test_a_finished_pipeline_prepares_each_stage_once_and_skips_them_all(tmp_path, monkeypatch):
    run = pipeline(tmp_path, "tune.n_trials=2")
    state = State(run.state.path)
    for stage in run.plan():
        state.put(stage.key, {**done(stage.prepare()), "round": stage.round, "stage": stage.name})
    calls: list[str] = []
    for kind in (ScrapeStage, ReviewStage, TuneStage, TrainStage, EvalStage):
        real = kind.prepare

        def counted(self, real=real):
            calls.append(self.key)
            return real(self)

        monkeypatch.setattr(kind, "prepare", counted)
    seen = []
    run = pipeline(tmp_path, "tune.n_trials=2")
    run.on_stage = lambda stage, status, record, details: seen.append((stage.key, status))
    summary = run.run()
    keys = ["1.scrape", "1.review", "1.tune", "1.train", "1.eval"]
    assert calls == keys, "prepared once each, before any stage"
    assert seen == [(key, "skipped") for key in keys]
    assert [row["status"] for row in summary["stages"]] == ["skipped"] * 5


def test_a_later_round_in_progress_keeps_round_one_done_unless_its_csv_changed(tmp_path):
    """Round 2 has begun (its top-up is recorded): round 1's review, train and eval stay done
    although the dataset changed; a changed CSV makes round 1 scrape again."""
    run = pipeline(tmp_path, "rounds=2")
    state = State(run.state.path)
    first = [s for s in run.plan() if s.round == 1]
    for stage in first:
        state.put(stage.key, {**done(stage.prepare()), "after": {"dataset": "before the top-up"}})
    state.put("2.top_up", {"status": "started", "config": "x", "before": {}})
    fresh = pipeline(tmp_path, "rounds=2")
    for stage in [s for s in fresh.plan() if s.round == 1]:
        assert stage.finished(fresh.state.get(stage.key), stage.prepare(), history=True), stage.key
    (tmp_path / "terms.csv").write_text(CSV + "bird,2,bird,train\n")
    scrape = ScrapeStage(1, pipeline(tmp_path, "rounds=2").context)
    assert not scrape.finished(fresh.state.get("1.scrape"), scrape.prepare(), history=True)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rounds=abc", "rounds: Value 'abc' of type 'str' could not be converted to Integer"),
        ("rounds=true", "rounds: Value 'True' of type 'bool' could not be converted to Integer"),
        ("loop.extra_images=0", "loop.extra_images=0: give a whole number of at least 1"),
        ("loop.weakest=1.5", "loop.weakest: Value '1.5' of type 'float' could not be converted to Integer"),
        ("model.pretrained=maybe", "model.pretrained: Value 'maybe' is not a valid bool"),
        ("review.fix=delete", "review.fix=delete: use quarantine, or null to only report"),
        ("train.overrides=3", "train.overrides must be a list of key=value strings"),
        ("loop.sizing=more", "loop.sizing=more: use curve or fixed"),
        ("loop.max_images=5", "loop.max_images=5: give at least loop.extra_images (20)"),
        ("loop.target_recall=1.5", "loop.target_recall=1.5: give a recall in (0, 1], or null"),
    ],
)
def test_settings_are_typed_and_a_wrong_one_names_its_key(tmp_path, override, message):
    with pytest.raises(ImgclfError, match=re.escape(message)):
        pipeline(tmp_path, override)


def test_the_typed_settings_are_what_the_stages_read(tmp_path):
    run = pipeline(tmp_path, "rounds=2", "loop.metric=f1", 'eval.overrides=["num_workers=0"]')
    assert isinstance(run.cfg, PipelineSettings)
    assert run.cfg.rounds == 2 and run.cfg.loop.metric == "f1" and run.cfg.model.weights_path is None
    assert run.cfg.paths.output_dir == str(tmp_path / "run"), "the run folder is resolved"
    assert run.context.overrides("eval") == ["num_workers=0"]
    assert EvalStage(1, run.context).prepare().configs["val"].num_workers == 0
    # the next round's top-up is sized by the val evaluation's learning curve; rounds=1 needs none
    assert EvalStage(1, run.context).prepare().configs["val"].curve is True
    assert EvalStage(1, run.context).prepare().configs["test"].curve is False
    assert EvalStage(1, pipeline(tmp_path, "rounds=1").context).prepare().configs["val"].curve is False
    fixed = pipeline(tmp_path, "rounds=2", "loop.sizing=fixed")
    assert EvalStage(1, fixed.context).prepare().configs["val"].curve is False

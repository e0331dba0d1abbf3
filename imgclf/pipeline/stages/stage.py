"""What every pipeline stage is: its settings (composed once), what it watches, ``run`` and
``summary``; and the :class:`Context` of one pipeline run that the stages share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import DictConfig

from imgclf.composition import compose
from imgclf.config import override
from imgclf.pipeline.settings import PipelineSettings
from imgclf.pipeline.state import State, tree_digest
from imgclf.tuning.best_hparams import BEST_HPARAMS

Record = dict[str, Any]


@dataclass
class Context:
    """One run of the pipeline over ``cfg`` (conf/pipeline.yaml): its folders and shared keys."""

    cfg: PipelineSettings
    state: State
    console: Any = None

    @property
    def root(self) -> Path:
        return Path(self.cfg.data.root)

    @property
    def model_dir(self) -> Path:
        return Path(self.cfg.paths.model_dir)

    @property
    def folder(self) -> Path:
        """The pipeline's own records: its state and every round's reports."""
        return self.model_dir / "pipeline"

    @property
    def model(self) -> Path:
        return self.model_dir / "model.ckpt"

    @property
    def best_hparams(self) -> Path:
        return self.model_dir / BEST_HPARAMS

    def round_dir(self, number: int) -> Path:
        return self.folder / f"round{number}"

    def metrics_path(self, number: int, split: str) -> Path:
        return self.round_dir(number) / f"eval_{split}" / "metrics.json"

    def dataset(self) -> str | None:
        return tree_digest(self.root)

    def shared(self, command: str) -> list[str]:
        """The pipeline's keys that the command's config has too, as overrides."""
        cfg = self.cfg
        overrides = [override("data.root", cfg.data.root)]
        # Not checkpoint_dir: a sweep gives each trial its own, under the trial's run folder.
        overrides += [
            override(f"paths.{key}", getattr(cfg.paths, key))
            for key in ("data_dir", "model_dir", "log_dir", "cache_dir")
        ]
        if command == "scrape":
            overrides.append(override("searchterms", cfg.searchterms))
        if command in ("train", "review"):
            overrides += [
                f"model/backbone={cfg.model.backbone}",
                override("model.pretrained", cfg.model.pretrained),
                override("model.weights_path", cfg.model.weights_path),
                override("seed", cfg.seed),
            ]
        return overrides

    def overrides(self, section: str) -> list[str]:
        """The user's own overrides of one stage's command (``<section>.overrides``)."""
        return list(self.cfg.section(section).overrides)


@dataclass
class Prepared:
    """A stage ready to run: its configs (or command), the hash of its settings, the files it watches."""

    digest: str
    watch: Callable[[], dict[str, Any]]
    configs: dict[str, DictConfig] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Ran:
    """What a stage's run gives: ``result`` (kept in the state), ``outcome`` (one line), and
    ``details`` (what its library function returned, for the entry point to print)."""

    result: Any
    outcome: str
    details: Any = None


class PipelineStage:
    """One stage of one round. Subclasses name their command (``name``), compose their settings in
    :meth:`prepare`, do their work in :meth:`run` and say what the summary shows in :meth:`summary`."""

    name: ClassVar[str]
    # in a round before the latest (history), a finished stage still runs again on new settings:
    # a new CSV has to be scraped, new tuning settings tuned
    reruns_in_history: ClassVar[bool] = False

    def __init__(self, number: int, context: Context) -> None:
        self.round = number
        self.context = context

    @property
    def key(self) -> str:
        return f"{self.round}.{self.name}"

    @property
    def label(self) -> str:
        return f"round {self.round} {self.name.replace('_', '-')}"

    @property
    def run_dir(self) -> Path:
        """The stage's own Hydra run folder, under the pipeline's."""
        return Path(self.context.cfg.paths.output_dir) / f"round{self.round}_{self.name}"

    def compose(self, command: str, overrides: list[str], run_dir: Path | None = None) -> DictConfig:
        """``conf/<command>.yaml`` with ``overrides``, as ``imgclf <command>`` would compose it."""
        return compose(
            command,
            overrides,
            run_dir or self.run_dir,
            fix=f"fix {command}.overrides (overrides: {' '.join(overrides)})",
            what=f"the {command} stage's settings",
        )

    def prepare(self) -> Prepared:
        raise NotImplementedError

    def run(self, prepared: Prepared, previous: Record | None, record: Record) -> Ran:
        raise NotImplementedError

    def finished(self, record: Record | None, prepared: Prepared, history: bool) -> bool:
        """Done before, with the same settings, and its files as it left them. A round before the
        latest is history: its stages saw a dataset the top-ups have changed since and made models
        that are gone, so they stay done, unless :attr:`reruns_in_history` and its settings changed
        (the latest round then trains with the result)."""
        if not record or record["status"] != "done":
            return False
        if history:
            return not self.reruns_in_history or record["config"] == prepared.digest
        return record["config"] == prepared.digest and prepared.watch() == record["after"]

    def summary(self, record: Record) -> Any:
        """What the pipeline's summary shows of this stage's finished ``record`` (its result)."""
        return record.get("result")

"""What runs the network: PyTorch on ``model.ckpt``, or ONNX Runtime on an exported file beside it.

``scripts/export.py`` (:mod:`imgclf.inference.export`) writes ``model.onnx`` and, with ``quantize=int8``,
``model.int8.onnx`` next to ``model.ckpt``. Each carries the model record (classes,
preprocessing, architecture, hyperparameters) and the result of the check it passed when it was
written, as ONNX metadata, and the sha256 of the ``model.ckpt`` it came from.

``runtime=`` picks the predictor for classify.py, eval.py and serve.py (:func:`load_predictor`):

- ``torch``: :class:`imgclf.inference.predict.Predictor` on ``model.ckpt``;
- ``onnx``: :class:`OnnxPredictor` on the int8 file when it is there and verified, else
  ``model.onnx`` (``precision=int8`` or ``fp32`` names one of them);
- ``auto``: the fastest verified file present: int8, else ``model.onnx``, else PyTorch (ONNX
  Runtime fp32 outran PyTorch bf16 + channels-last even on a CPU with native bf16:
  docs/benchmarks.md). A file exported from another ``model.ckpt`` than the one beside it is never
  used.

Both predictors share decoding, preprocessing and the shape of the answers
(:class:`imgclf.inference.predict.PredictorBase`). Nothing here imports Lightning, and ``onnxruntime`` is
imported only when an ONNX file is to be read.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imgclf.data.hashing import sha256_file
from imgclf.errors import ImgclfError
from imgclf.inference.predict import PRECISIONS, Predictor, PredictorBase
from imgclf.models.checkpoint import read_model

log = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnx", "auto")
CKPT_NAME = "model.ckpt"
ONNX_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"
# ONNX metadata keys (JSON values) written by imgclf.inference.export
RECORD_KEY = "imgclf.record"
CHECK_KEY = "imgclf.check"
SOURCE_KEY = "imgclf.source_sha256"
PRECISION_KEY = "imgclf.precision"
ONNX_PRECISIONS = {"auto": None, "fp32": "32-true", "32-true": "32-true", "int8": "int8"}
INSTALL_HINT = "install imgclf's onnx extra: `pip install -e '.[onnx]'`"


def import_onnxruntime(purpose: str = "runtime=onnx") -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ImgclfError(f"{purpose} needs the onnxruntime package, which is not installed; {INSTALL_HINT}")
    return onnxruntime


def onnxruntime_installed() -> bool:
    try:
        import_onnxruntime()
    except ImgclfError:
        return False
    return True


def session_options(
    onnxruntime: Any, threads: int | None = None, optimize: bool = True, spin: bool = True
) -> Any:
    """``spin=False``: the threads sleep between runs instead of spinning for the next one, which
    leaves the cores to whatever else the process does (a server's HTTP and decoding)."""
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:  # only the metadata is wanted: skip the graph optimisations
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    # errors only: ONNX Runtime prints its warnings (unused initializers, ...) itself, past logging
    options.log_severity_level = 3
    return options


def open_session(
    model: str | os.PathLike | bytes, threads: int | None = None, optimize: bool = True, spin: bool = True
) -> Any:
    """An ONNX Runtime CPU session on a file or on serialized model bytes."""
    onnxruntime = import_onnxruntime()
    name = "the exported model" if isinstance(model, bytes) else str(model)
    try:
        return onnxruntime.InferenceSession(
            model if isinstance(model, bytes) else str(model),
            session_options(onnxruntime, threads, optimize, spin),
            providers=["CPUExecutionProvider"],
        )
    except Exception as exc:  # ONNX Runtime raises its own types for unreadable or newer files
        raise ImgclfError(
            f"ONNX Runtime {onnxruntime.__version__} cannot load {name} ({exc}); export it again with "
            "`python scripts/export.py`, or upgrade onnxruntime"
        ) from None


@dataclass(frozen=True)
class OnnxFile:
    """What an exported file says about itself (its ONNX metadata)."""

    path: Path
    record: dict[str, Any]
    check: dict[str, Any]
    source_sha256: str
    precision: str  # "32-true" or "int8"

    @property
    def verified(self) -> bool:
        return bool(self.check.get("verified"))

    def check_summary(self) -> str:
        return describe_check(self.check) if "top1_agreement" in self.check else "not checked"


def describe_check(check: dict[str, Any]) -> str:
    return (
        f"top-1 agreement {check['top1_agreement']:.2%} with PyTorch fp32 on {check['images']} "
        f"{check['split']} images, max probability difference {check['max_probability_difference']:.1e}"
    )


def onnx_metadata(session: Any, name: str) -> tuple[dict[str, Any], dict[str, Any], str, str]:
    """(record, check, source sha256, precision) from a session's metadata."""
    meta = session.get_modelmeta().custom_metadata_map
    if RECORD_KEY not in meta:
        raise ImgclfError(
            f"{name} is an ONNX file without imgclf's model record; export the model with "
            "`python scripts/export.py`"
        )
    return (
        json.loads(meta[RECORD_KEY]),
        json.loads(meta.get(CHECK_KEY, "{}")),
        meta.get(SOURCE_KEY, ""),
        meta.get(PRECISION_KEY, "32-true"),
    )


def read_onnx(path: str | os.PathLike) -> OnnxFile:
    """The metadata of an exported file, without preparing it to run."""
    path = Path(path)
    session = open_session(path, optimize=False)
    return OnnxFile(path, *onnx_metadata(session, str(path)))


class OnnxPredictor(PredictorBase):
    """An exported model run by ONNX Runtime on the CPU, with :class:`imgclf.inference.predict.Predictor`'s
    interface: same decoding, same preprocessing (from the model record in the file), same answers.
    """

    runtime = "onnx"

    def __init__(
        self,
        model: str | os.PathLike | bytes,
        source: str | os.PathLike | None = None,
        threads: int | None = None,
        spin: bool = True,
    ) -> None:
        """``model``: a file, or serialized bytes (then ``source`` names them); ``threads`` and
        ``spin`` as :func:`session_options` takes them."""
        if source is None and not isinstance(model, bytes):
            source = model
        self.session = open_session(model, threads, spin=spin)
        record, self.check, self.source_sha256, precision = onnx_metadata(self.session, str(source))
        super().__init__(record, record["preprocessing"], record["architecture"]["backbone"]["name"], source)
        self.precision = precision
        self.input_name = self.session.get_inputs()[0].name

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, threads: int | None = None, spin: bool = True
    ) -> OnnxPredictor:
        return cls(path, threads=threads, spin=spin)

    def predict_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalised images [N, 3, H, W] -> class probabilities [N, K] (float32)."""
        images = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run(None, {self.input_name: images})
        return torch.softmax(torch.from_numpy(logits).float(), dim=1)


@dataclass(frozen=True)
class ModelChoice:
    """The file a command will run and with what, and why."""

    runtime: str  # "torch" or "onnx"
    path: Path
    reason: str
    onnx: OnnxFile | None = None

    def record(self) -> dict[str, Any]:
        """The model record (classes, preprocessing, hparams, ...), without the weights."""
        if self.onnx is not None:
            return self.onnx.record
        return {k: v for k, v in read_model(self.path).items() if k != "state_dict"}


def model_paths(ckpt_path: str | os.PathLike) -> tuple[Path, Path]:
    """(model.ckpt, its folder) for a model.ckpt path or a model folder."""
    path = Path(ckpt_path)
    if path.is_dir():
        return path / CKPT_NAME, path
    return path, path.parent


def check_options(runtime: str, precision: str) -> None:
    if runtime not in RUNTIMES:
        raise ImgclfError(f"runtime={runtime!r}; use one of {', '.join(RUNTIMES)}")
    known = {**PRECISIONS, **ONNX_PRECISIONS}
    if precision not in known:
        raise ImgclfError(f"precision={precision!r}; use one of {', '.join(known)}")
    if runtime == "torch" and precision == "int8":
        raise ImgclfError(
            "precision=int8 runs the exported model.int8.onnx: use runtime=onnx (export it first with "
            "`python scripts/export.py quantize=int8`)"
        )
    if runtime == "onnx" and precision not in ONNX_PRECISIONS:
        raise ImgclfError(
            f"runtime=onnx runs int8 or fp32 files; precision={precision!r} needs runtime=torch"
        )


def candidates(folder: Path, precision: str) -> list[Path]:
    """The exported files a precision allows, fastest first."""
    wanted = ONNX_PRECISIONS.get(precision)
    names = {None: [INT8_NAME, ONNX_NAME], "int8": [INT8_NAME], "32-true": [ONNX_NAME]}[wanted]
    return [folder / name for name in names]


def choose_model(
    ckpt_path: str | os.PathLike, runtime: str = "auto", precision: str = "auto", device: str = "cpu"
) -> ModelChoice:
    """Which file runs, with which runtime, and why (see the module's docstring)."""
    check_options(runtime, precision)
    if precision == "int8":  # only an exported file runs in int8
        runtime = "onnx"
    path = Path(ckpt_path)
    if path.suffix == ".onnx":
        if runtime == "torch":
            raise ImgclfError(
                f"{path} is an exported ONNX file: use runtime=onnx, or point ckpt_path at model.ckpt"
            )
        import_onnxruntime()
        if not path.is_file():
            raise ImgclfError(f"no exported model at {path}; export one with `python scripts/export.py`")
        return ModelChoice("onnx", path, "the ONNX file given as ckpt_path", read_onnx(path))
    ckpt, folder = model_paths(path)
    if runtime == "torch":
        return ModelChoice("torch", ckpt, "runtime=torch")
    if runtime == "onnx" and device != "cpu":
        raise ImgclfError(f"runtime=onnx runs on the CPU; on {device} use runtime=torch (or auto)")
    present = [p for p in candidates(folder, precision) if p.is_file()]
    if runtime == "auto":
        reason = auto_skips_onnx(precision, device, present)
        if reason:
            return ModelChoice("torch", ckpt, reason)
    import_onnxruntime()
    ckpt_sha256 = sha256_file(ckpt) if ckpt.is_file() else None
    skipped: list[str] = []
    unverified: OnnxFile | None = None
    for candidate in present:
        onnx = read_onnx(candidate)
        if ckpt_sha256 is not None and onnx.source_sha256 != ckpt_sha256:
            skipped.append(
                f"{candidate.name} was exported from another {ckpt.name} (retrained since?); "
                "run `python scripts/export.py` again"
            )
        elif not onnx.verified:
            skipped.append(f"{candidate.name} did not pass its export check ({onnx.check_summary()})")
            unverified = unverified or onnx
        else:
            return ModelChoice("onnx", candidate, f"{candidate.name}: {onnx.check_summary()}", onnx)
    if runtime == "auto":
        return ModelChoice("torch", ckpt, "; ".join(skipped))
    if unverified is not None:
        log.warning("%s; runtime=onnx uses it all the same", skipped[-1])
        return ModelChoice("onnx", unverified.path, skipped[-1], unverified)
    wanted = " or ".join(p.name for p in candidates(folder, precision))
    hint = "python scripts/export.py" + (" quantize=int8" if precision == "int8" else "")
    raise ImgclfError(
        "; ".join(skipped) or f"no exported {wanted} in {folder}; export the model with `{hint}`"
    )


def auto_skips_onnx(precision: str, device: str, present: list[Path]) -> str | None:
    """Why ``runtime=auto`` goes straight to PyTorch, or None."""
    if device != "cpu":
        return f"ONNX Runtime runs on the CPU here; PyTorch runs on {device}"
    if precision not in ONNX_PRECISIONS:
        return f"precision={precision} is a PyTorch precision"
    if not present:
        return "no exported model.onnx beside it (`python scripts/export.py` makes one)"
    if not onnxruntime_installed():
        return f"onnxruntime is not installed ({INSTALL_HINT})"
    return None


def load_predictor(
    ckpt_path: str | os.PathLike,
    runtime: str = "auto",
    precision: str = "auto",
    channels_last: bool = True,
    device: str = "cpu",
    threads: int | None = None,
    spin: bool = True,
) -> PredictorBase:
    """The predictor ``runtime`` asks for (``auto``: the fastest verified one), logging the choice.

    ``channels_last`` applies to PyTorch, ``threads`` and ``spin`` to ONNX Runtime (PyTorch's
    threads are set with ``torch.set_num_threads``).
    """
    choice = choose_model(ckpt_path, runtime, precision, device)
    log.info("runtime %s: %s, %s (%s)", runtime, choice.runtime, choice.path, choice.reason)
    return open_predictor(choice, precision, channels_last, device, threads, spin)


def open_predictor(
    choice: ModelChoice,
    precision: str = "auto",
    channels_last: bool = True,
    device: str = "cpu",
    threads: int | None = None,
    spin: bool = True,
) -> PredictorBase:
    """The predictor of a file :func:`choose_model` chose (the server chooses once, at start-up,
    and each inference worker opens the choice)."""
    if choice.runtime == "torch":
        return Predictor.from_file(
            choice.path, precision=precision, channels_last=channels_last, device=device
        )
    return OnnxPredictor.from_file(choice.path, threads=threads, spin=spin)

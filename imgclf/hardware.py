"""What the machine can do fast: bf16 autocast on CPUs that have it, CUDA when present.

``precision=auto`` on a CPU asks what the precision is for. Training (forward and backward) is
faster in bf16 on any CPU with native bf16 instructions (AVX512-BF16: 1.14x fp32 on a 2-core Xeon
without AMX; AMX much more). Inference is faster in bf16 only where AMX computes it on its tile
unit: with AVX512-BF16 alone every backbone ran 0.55x to 0.85x of fp32 at batch 8
(docs/benchmarks.md, "Backbones"), so serving, evaluation and the review stay in fp32 there.

``python -m imgclf.hardware`` prints the CPU's features and the precision ``auto`` chooses; CI and
the benchmarks print it so that a figure or a failure can be read against the machine it came from.

The CPU's kernels can be capped below what it has (``ATEN_CPU_CAPABILITY=avx2`` for PyTorch's own
kernels, ``ONEDNN_MAX_CPU_ISA=AVX2`` for oneDNN's convolutions): the choice follows the cap, so an
AVX-512 machine can reproduce what an AVX2-only one computes.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import torch

# Linux /proc/cpuinfo flag -> the name printed beside benchmark figures
FEATURE_FLAGS = {
    "AVX2": ("avx2",),
    "AVX-512": ("avx512f",),
    "VNNI": ("avx512_vnni", "avx_vnni"),
    "bf16": ("avx512_bf16", "amx_bf16"),
    "AMX": ("amx_tile",),
}
# oneDNN ISA names below the first with native bf16 (avx512_core_bf16)
_ONEDNN_WITHOUT_BF16 = ("sse41", "avx", "avx2", "avx2_vnni", "avx512_core", "avx512_core_vnni")
# The environments under which this machine computes as another kind of CPU would, for measuring
# how a learned result varies between machines (benchmarks/demo_recipe.py, quality_spread.py):
# "avx2" an AVX2-only CPU (fp32, AVX2 kernels); "avx512-fp32" AVX-512 kernels without bf16.
CPU_MODES: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "avx512-fp32": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"},
}


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The processor's feature flags as Linux reports them; empty where that file does not exist."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_features(flags: frozenset[str] | None = None) -> dict[str, bool]:
    """Which of FEATURE_FLAGS the CPU (or the given /proc/cpuinfo flags) has."""
    flags = cpu_flags() if flags is None else flags
    return {name: any(flag in flags for flag in names) for name, names in FEATURE_FLAGS.items()}


def kernels_capped() -> bool:
    """Has the user limited PyTorch or oneDNN to instructions without native bf16?"""
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return True
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "").lower() in _ONEDNN_WITHOUT_BF16


PURPOSES = ("training", "inference")


def bf16_is_faster(features: dict[str, bool], purpose: str = "training") -> bool:
    """Does bf16 autocast outrun fp32 on a CPU with these features, for this purpose?

    Emulated bf16 (no native instructions) is always slower; native AVX512-BF16 speeds training up
    but not inference; AMX speeds up both (see the module docstring for the measurements)."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose={purpose!r}; use one of {PURPOSES}")
    return features["AMX"] if purpose == "inference" else features["bf16"]


def cpu_has_fast_bf16(purpose: str = "training") -> bool:
    """True where this CPU, with the kernels in use, runs ``purpose`` faster in bf16 than in fp32."""
    return bf16_is_faster(cpu_features(), purpose) and not kernels_capped()


def uses_cuda(accelerator: str | None) -> bool:
    if accelerator in ("gpu", "cuda"):
        return True
    return accelerator in (None, "auto") and torch.cuda.is_available()


def compute_device(accelerator: str | None) -> torch.device:
    """Where work outside Lightning's loop (the feature pass, the final accuracy) runs."""
    return torch.device("cuda" if uses_cuda(accelerator) and torch.cuda.is_available() else "cpu")


def resolve_precision(
    precision: str | None, accelerator: str | None = "cpu", purpose: str = "training"
) -> str:
    """``auto`` -> bf16 mixed precision where the hardware runs ``purpose`` faster in it, else fp32."""
    if precision not in (None, "auto"):
        return str(precision)
    if uses_cuda(accelerator):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_fast_bf16(purpose) else "32-true"


def autocast_dtype(precision: str) -> torch.dtype | None:
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine() -> str:
    """One line: the CPU, its features, the kernels in use and what ``precision=auto`` picks."""
    features = ", ".join(f"{name} {'yes' if has else 'no'}" for name, has in cpu_features().items())
    cap = torch.backends.cpu.get_cpu_capability()
    capped = " (capped)" if cpu_features()["AVX-512"] and kernels_capped() else ""
    return (
        f"CPU: {cpu_model()}, {os.cpu_count()} cores | {features} | kernels {cap}{capped} | "
        f"precision auto -> {resolve_precision('auto', 'cpu')} training, "
        f"{resolve_precision('auto', 'cpu', 'inference')} inference | torch {torch.__version__}"
    )


if __name__ == "__main__":
    print(describe_machine())

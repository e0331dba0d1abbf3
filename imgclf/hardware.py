"""What the machine can do fast: bf16 autocast on CPUs that have it, CUDA when present."""

from __future__ import annotations

import torch


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 math (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    cpu = torch.cpu
    checks = [getattr(cpu, "_is_avx512_bf16_supported", None), getattr(cpu, "_is_amx_tile_supported", None)]
    return any(check() for check in checks if check is not None)


def uses_cuda(accelerator: str | None) -> bool:
    if accelerator in ("gpu", "cuda"):
        return True
    return accelerator in (None, "auto") and torch.cuda.is_available()


def compute_device(accelerator: str | None) -> torch.device:
    """Where work outside Lightning's loop (the feature pass, the final accuracy) runs."""
    return torch.device("cuda" if uses_cuda(accelerator) and torch.cuda.is_available() else "cpu")


def resolve_precision(precision: str | None, accelerator: str | None = "cpu") -> str:
    """``auto`` -> bf16 mixed precision where the hardware runs it fast, fp32 otherwise."""
    if precision not in (None, "auto"):
        return str(precision)
    if uses_cuda(accelerator):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_fast_bf16() else "32-true"


def autocast_dtype(precision: str) -> torch.dtype | None:
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return None

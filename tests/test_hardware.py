"""What ``precision=auto`` picks, by CPU feature and purpose, and that capping the kernels is obeyed."""

import os
import subprocess
import sys

import pytest

from imgclf.hardware import bf16_is_faster, cpu_features, cpu_has_fast_bf16, resolve_precision

AVX2 = frozenset({"avx2", "fma"})
AVX512_BF16 = AVX2 | {"avx512f", "avx512_vnni", "avx512_bf16"}
AMX = AVX512_BF16 | {"amx_tile", "amx_bf16"}


@pytest.mark.parametrize(
    ("flags", "training", "inference"),
    [(AVX2, False, False), (AVX512_BF16, True, False), (AMX, True, True)],
    ids=["avx2", "avx512-bf16-without-amx", "amx"],
)
def test_bf16_only_where_it_was_measured_faster(flags, training, inference):
    features = cpu_features(flags)
    assert bf16_is_faster(features, "training") is training
    assert bf16_is_faster(features, "inference") is inference


def test_an_unknown_purpose_is_refused():
    with pytest.raises(ValueError, match="purpose='serving'; use one of"):
        bf16_is_faster(cpu_features(AMX), "serving")


def test_auto_follows_this_cpu_and_an_explicit_choice_wins():
    for purpose in ("training", "inference"):
        expected = "bf16-mixed" if cpu_has_fast_bf16(purpose) else "32-true"
        assert resolve_precision("auto", "cpu", purpose) == expected
        assert resolve_precision("32-true", "cpu", purpose) == "32-true"
        assert resolve_precision("bf16-mixed", "cpu", purpose) == "bf16-mixed"


def test_capped_kernels_make_auto_choose_fp32():
    """An AVX-512 machine told to compute as an AVX2 one (imgclf.hardware.CPU_MODES) picks fp32."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run(
        [sys.executable, "-m", "imgclf.hardware"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "precision auto -> 32-true training, 32-true inference" in out, out

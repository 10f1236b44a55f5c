"""test/gpu_image_check.py, the GPU image's checks that need no GPU (issue 22, item 3), run here on the
development virtualenv: it holds the same torch and nvidia-* wheels as the image, so the checks must pass on
it, and each must fail on what it exists to catch."""

import shutil
from pathlib import Path

import pytest
import torch

import gpu_image_check as check

SITE = Path(torch.__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(
    not (SITE / "torch" / "lib" / "libtorch_cuda.so").exists(),
    reason="this torch is a CPU-only build; the checks are about the CUDA wheels",
)


def test_the_development_wheels_pass_every_check(capsys):
    assert check.main(["--site", str(SITE)]) == 0
    out = capsys.readouterr().out
    assert "ok    torch is built for sm_75" in out and "ok    torch is built for sm_90" in out
    assert "ok    ldd torch/lib/libtorch_cuda.so" in out
    assert "ok    dlopen('libnvrtc-builtins.so.12.8') from libnvrtc.so.12 finds" in out
    assert "FAIL" not in out


def test_an_arch_list_without_turing_fails():
    report = check.Report()
    check.check_archs(report, "sm_80 sm_86 sm_90")
    assert report.failures == ["torch is built for sm_75 (its arch list: sm_80 sm_86 sm_90)"]
    check.check_archs(report, "")
    assert "torch is built for sm_90 (its arch list: empty)" in report.failures


def test_elf_reader_sees_what_the_loader_reads():
    dyn = check.read_dynamic(SITE / "torch" / "lib" / "libcaffe2_nvrtc.so")
    assert "libnvrtc.so.12" in dyn.needed and "libcuda.so.1" in dyn.needed
    assert all("$ORIGIN" not in p for p in dyn.runpath + dyn.rpath)
    assert str(SITE / "torch" / "lib") in {str(Path(p).resolve()) for p in dyn.runpath + dyn.rpath}


def test_ldd_misses_are_reported_but_not_the_drivers_own():
    # libcaffe2_nvrtc.so needs libcuda.so.1 (the host driver's): not a miss
    assert check.unresolved(SITE / "torch" / "lib" / "libcaffe2_nvrtc.so") == []
    ucx = SITE / "nvidia" / "nvshmem" / "lib" / "nvshmem_transport_ucx.so.3"
    if ucx.exists():
        assert "libucs.so.0" in check.unresolved(ucx)


def test_a_library_opened_by_name_that_is_nowhere_fails(tmp_path):
    lib = tmp_path / "torch" / "lib"
    lib.mkdir(parents=True)
    shutil.copy(SITE / "torch" / "lib" / "libtorch_global_deps.so", lib)
    report = check.Report()
    check.check_by_name(
        report,
        tmp_path,
        table=(
            ("libtorch_global_deps.so", "libcudart.so.12", "libcudart.so.12"),  # named, and loaded by import torch
            ("libtorch_global_deps.so", "libgone.so.7", "libcudart.so.12"),  # named (as a stand-in), found nowhere
            ("libtorch_global_deps.so", "libcudart.so.12", "libnot_named_here.so"),  # the table is stale
            ("libabsent.so", "libcudart.so.12", "libcudart.so.12"),  # the opener itself is missing
        ),
    )
    assert report.failures == [
        "dlopen('libgone.so.7') from libtorch_global_deps.so finds nothing",
        "libtorch_global_deps.so names 'libnot_named_here.so' (the table is true of this build)",
        "libabsent.so (which opens libcudart.so.12 by name) is in the image",
    ]

"""GPU decisions that need no GPU: which device a rank takes, CUDA failures as user errors, wheels vs GPUs,
and the install checks of `make install-gpu` (scripts/check_gpu_build.sh) with stand-in toolchains."""

from __future__ import annotations

import os
import shlex
import subprocess

import pytest

from conftest import ROOT
from kobert_pretrain.errors import UserError
from kobert_pretrain.gpu import (cuda_failure, device_for_rank, device_kind, library_problems, start_up_failure,
                                 wheel_problem)


@pytest.mark.parametrize("local_rank,local_size,visible,cvd,expected", [
    (0, 1, 1, None, 0),
    (3, 8, 8, None, 3),          # one rank per GPU of an 8-GPU node
    (1, 2, 8, "0,1,2,3,4,5,6,7", 1),
    (5, 8, 1, "5", 0),           # the scheduler gave each task its own GPU
    (0, 1, 4, None, 0),
])
def test_device_for_rank(local_rank, local_size, visible, cvd, expected):
    assert device_for_rank(local_rank, local_size, visible, cvd) == expected


@pytest.mark.parametrize("local_rank,local_size,visible,cvd,needle", [
    (8, 9, 8, None, "9 ranks on"),        # too many slots for the node: was "invalid device ordinal"
    (1, 2, 1, None, "sees 1 GPU(s)"),     # two ranks would share the only GPU
    (0, 1, 0, "", "no GPU visible to rank 0"),
])
def test_device_for_rank_refuses_with_the_numbers(local_rank, local_size, visible, cvd, needle):
    with pytest.raises(UserError) as e:
        device_for_rank(local_rank, local_size, visible, cvd)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("message,needle", [
    ("[10:01:02] src/operator/nn/./cudnn/cudnn_convolution-inl.h:50: Check failed: e == cudaSuccess (209 vs. 0) : "
     "CUDA: no kernel image is available for execution on the device", "no CUDA kernels for GPU 3"),
    ("Check failed: e == cudaSuccess || e == cudaErrorCudartUnloading: CUDA: out of memory", "ran out of memory"),
    ("Check failed: e == cudaSuccess (101 vs. 0) : invalid device ordinal", "does not exist for this process"),
    ("CUDA: CUDA driver version is insufficient for CUDA runtime version", "driver is too old"),
])
def test_cuda_start_up_failures_are_named(message, needle):
    assert needle in cuda_failure(message, "GPU 3")


def test_other_errors_are_not_cuda_start_up_failures():
    assert cuda_failure("Check failed: shape mismatch (3,) vs (4,)") is None


class _Device:  # what start_up_failure reads of an mx.Context
    def __init__(self, kind, index):
        self.device_type, self.index = kind, index

    def __str__(self):
        return f"{self.device_type}({self.index})"


def test_start_up_failure_is_one_line_on_a_gpu_and_none_on_cpu():
    oom = RuntimeError("Check failed: e == cudaSuccess: CUDA: out of memory")
    error = start_up_failure(oom, _Device("gpu", 1), rank=3)
    assert isinstance(error, UserError) and str(error).startswith("cannot train on gpu(1) of rank 3: gpu(1) ran out")
    assert start_up_failure(oom, _Device("cpu", 1), rank=3) is None
    assert start_up_failure(RuntimeError("shape mismatch"), _Device("gpu", 0), rank=0) is None


@pytest.mark.parametrize("setting,num_gpus,kind", [("auto", 0, "cpu"), ("auto", 2, "gpu"), ("cpu", 8, "cpu"),
                                                   ("gpu", 0, "gpu")])
def test_device_kind(setting, num_gpus, kind):
    assert device_kind(setting, num_gpus) == kind


@pytest.mark.parametrize("wheel,cc,ok", [
    ("mxnet-cu110", 70, True), ("mxnet-cu110", 75, True), ("mxnet-cu110", 80, True), ("mxnet-cu110", 86, True),
    ("mxnet-cu112", 86, True), ("mxnet-cu112", 89, True), ("mxnet-cu110", 90, False), ("mxnet-cu112", 90, False),
    ("mxnet-cu110", 37, False),
])
def test_wheel_kernels_against_compute_capability(wheel, cc, ok):
    problem = wheel_problem(wheel, cc)
    assert (problem is None) == ok, problem
    if not ok:
        assert "no MXNet 1.x wheel supports this GPU" in problem


def test_library_check_on_the_cpu_build_finds_nothing_to_fix():
    assert library_problems() == []


# ------------------------------------------------------------------ scripts/check_gpu_build.sh


def _toolchain(tmp_path, release="11.0", gcc="9", nccl=True, gpus=None):
    """A stand-in CUDA toolkit, g++ and nvidia-smi on PATH."""
    cuda = tmp_path / "cuda"
    bins = tmp_path / "bin"
    for d in (cuda / "bin", cuda / "include", cuda / "lib64", bins):
        d.mkdir(parents=True, exist_ok=True)

    def tool(path, body):
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)

    tool(cuda / "bin" / "nvcc", f"echo 'Cuda compilation tools, release {release}, V{release}.1'\n")
    tool(bins / "g++", f'case "$1" in -dumpversion) echo {gcc};; *) echo "g++ (Debian {gcc}.2.0) {gcc}.2.0";; esac\n')
    if nccl:
        (cuda / "include" / "nccl.h").write_text("#define NCCL_MAJOR 2\n#define NCCL_MINOR 8\n#define NCCL_PATCH 4\n")
        (cuda / "lib64" / "libnccl.so.2").write_text("")
    if gpus is not None:
        tool(bins / "nvidia-smi", "".join(f"echo '{line}'\n" for line in gpus))
    return dict(os.environ, PATH=f"{bins}:{cuda / 'bin'}:/usr/bin:/bin", CUDA_HOME=str(cuda),
                NCCL_HOME=str(tmp_path / "none"), CXX="g++")


def _check(env):
    return subprocess.run(["bash", str(ROOT / "scripts" / "check_gpu_build.sh")], env=env, capture_output=True,
                          text=True)


def _settings(stdout):
    """The assignments as `eval` in the Makefile reads them (printf %q quoting)."""
    return {k: shlex.split(v)[0] for k, v in (line.split("=", 1) for line in stdout.splitlines())}


@pytest.mark.parametrize("release,wheel", [("11.0", "mxnet-cu110"), ("11.2", "mxnet-cu112"), ("11.8", "mxnet-cu112")])
def test_gpu_build_picks_the_wheel_from_the_toolkit(tmp_path, release, wheel):
    env = _toolchain(tmp_path, release=release, gpus=["Tesla V100-SXM2-32GB, 7.0", "Tesla V100-SXM2-32GB, 7.0"])
    result = _check(env)
    assert result.returncode == 0, result.stderr
    settings = _settings(result.stdout)
    cuda = str(tmp_path / "cuda")
    # Horovod's own variable names, not CUDA_HOME/NCCL_HOME, which its build never reads.
    assert settings == {"MXNET_WHEEL": wheel, "HOROVOD_CUDA_HOME": cuda, "HOROVOD_NCCL_INCLUDE": f"{cuda}/include",
                        "HOROVOD_NCCL_LIB": f"{cuda}/lib64", "HOROVOD_BUILD_CUDA_CC_LIST": "70"}
    assert "NCCL 2.8.4" in result.stderr


@pytest.mark.parametrize("release,gcc,needle", [
    ("13.0", "12", "nvcc is CUDA 13.0; MXNet 1.9.1 wheels exist for CUDA 11.0 (mxnet-cu110) and 11.2"),
    ("11.1", "9", "nvcc is CUDA 11.1: mxnet-cu110 links CUDA 11.0's libnvrtc.so.11.0"),
    ("11.0", "12", "nvcc 11.0 accepts g++ up to 9, but g++ is version 12"),
    ("11.4", "12", "nvcc 11.4 accepts g++ up to 11"),
])
def test_gpu_build_refuses_toolkits_and_compilers(tmp_path, release, gcc, needle):
    result = _check(_toolchain(tmp_path, release=release, gcc=gcc))
    assert result.returncode == 1 and result.stdout == ""
    assert needle in result.stderr, result.stderr


def test_gpu_build_says_everything_that_is_missing_at_once(tmp_path):
    result = _check(_toolchain(tmp_path, release="13.0", nccl=False))
    assert result.returncode == 1
    for needle in ("nvcc is CUDA 13.0", "nccl.h not found", "libnccl.so not found"):
        assert needle in result.stderr


def test_gpu_build_refuses_hopper_before_building(tmp_path):
    result = _check(_toolchain(tmp_path, release="11.2", gpus=["NVIDIA H200, 9.0"]))
    assert result.returncode == 1
    assert "NVIDIA H200 is compute capability 9.0: MXNet 1.9.1 wheels have kernels up to sm_86 and no PTX" in result.stderr


def test_gpu_build_kernels_for_the_node_s_gpus(tmp_path):
    env = _toolchain(tmp_path, release="11.2", gpus=["NVIDIA A100-SXM4-40GB, 8.0", "Tesla V100-PCIE-16GB, 7.0"])
    assert _settings(_check(env).stdout)["HOROVOD_BUILD_CUDA_CC_LIST"] == "70,80"
    env["HOROVOD_BUILD_CUDA_CC_LIST"] = "70"
    assert _settings(_check(env).stdout)["HOROVOD_BUILD_CUDA_CC_LIST"] == "70"

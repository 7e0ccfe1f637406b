"""The GPUs of this process: which one a rank uses, what they are, whether they compute, and why CUDA failed.

Everything here that touches CUDA goes through MXNet or through the CUDA libraries MXNet has
already loaded (ctypes), so it needs no extra package and reports the versions MXNet really uses.
The decisions (`device_for_rank`, `cuda_failure`, `wheel_problem`) are pure functions, tested on CPU;
`probe` and `versions` run only where a GPU exists (`kobert-pretrain doctor --gpu`, scripts/gpu_check.sh).
"""

from __future__ import annotations

import ctypes
import os
import socket

from kobert_pretrain.errors import UserError

# Compute capabilities that mxnet-cu110/-cu112 1.9.1 carry kernels for, read from the fatbin headers
# of each wheel's libmxnet.so (198 fatbins, every one with exactly these SASS images and no PTX).
# SASS runs on later minor versions of the same major only, so a Hopper (sm_90) GPU fails at the
# first kernel ("no kernel image is available"); no MXNet 1.x wheel was built for it.
# V100 is sm_70, T4 sm_75, A100 sm_80, A10/RTX 30xx sm_86.
MXNET_WHEEL_ARCHS = {"mxnet-cu110": (50, 60, 70, 80), "mxnet-cu112": (50, 60, 70, 80, 86)}


def device_for_rank(local_rank: int, local_size: int, visible: int,
                    cuda_visible_devices: str | None = None) -> int:
    """The GPU index (within this process's visible GPUs) that local rank `local_rank` must use.

    One rank per GPU: rank k of a host takes visible GPU k. A scheduler that gives each task its own
    GPU through CUDA_VISIBLE_DEVICES leaves one visible GPU per process: then it is GPU 0. Anything
    else would either fail at the first kernel with "invalid device ordinal" (more ranks than GPUs)
    or put two ranks on one GPU, so it is refused with the numbers.
    """
    host = socket.gethostname()
    if visible < 1:
        raise UserError(f"no GPU visible to rank {local_rank} on {host} (CUDA_VISIBLE_DEVICES="
                        f"{cuda_visible_devices!r}; CPU build of mxnet?); check with `kobert-pretrain doctor --gpu`")
    if local_rank < visible and (visible >= local_size or local_size == 1):
        return local_rank
    if visible == 1 and cuda_visible_devices not in (None, ""):
        # Each process was given its own device by the scheduler (slurm --gpus-per-task, k8s).
        return 0
    raise UserError(f"{local_size} ranks on {host} but this process sees {visible} GPU(s) "
                    f"(CUDA_VISIBLE_DEVICES={cuda_visible_devices!r}): start at most {visible} rank(s) per host "
                    f"(slots={visible} in the hostfile, -H {host}:{visible}), or give each process its own GPU "
                    "through CUDA_VISIBLE_DEVICES")


def device_kind(setting: str, num_gpus: int) -> str:
    """"cpu" or "gpu" for `train.device` (auto/cpu/gpu) once MXNet is imported: auto means a GPU when it sees one."""
    if setting != "auto":
        return setting
    return "gpu" if num_gpus > 0 else "cpu"


def rank_device(kind: str, local_rank: int, local_size: int):
    """This rank's MXNet device. Local rank k takes GPU k (or the one GPU a scheduler gave the process); on CPU
    it takes `cpu(k)`, which computes like `cpu(0)` but carries device id k as `gpu(k)` does: MXNet keys
    per-device state by it (the optimizer's update counts), so CPU runs exercise what GPU runs rely on."""
    import mxnet as mx

    if kind != "gpu":
        return mx.cpu(local_rank)
    return mx.gpu(device_for_rank(local_rank, local_size, mx.context.num_gpus(), visible_devices()))


def start_up_failure(error: Exception, device, rank: int) -> UserError | None:
    """A CUDA failure of rank `rank` while setting up on `device` (no kernels for this GPU, out of memory, a
    busy device) as a one-line user error: a restart by `launch` cannot fix it. None for anything else."""
    cause = cuda_failure(str(error), str(device)) if device.device_type == "gpu" else None
    return UserError(f"cannot train on {device} of rank {rank}: {cause}") if cause else None


def cuda_failure(message: str, device: str = "the GPU") -> str | None:
    """A one-line user-facing cause for a CUDA error MXNet raised while setting up, or None if it is not one.

    These failures are properties of the node or the install, not of the run: restarting the job
    (`launch`) cannot fix them, so the trainer raises them as user errors (exit status 2).
    """
    text = message.lower()
    if "no kernel image is available" in text:
        return (f"this MXNet build has no CUDA kernels for {device} (mxnet-cu110/-cu112 1.9.1 carry kernels for "
                "compute capability 5.x-8.x only: V100, T4, A100, A10; not H100/H200); run `kobert-pretrain doctor --gpu`")
    if "out of memory" in text:
        return (f"{device} ran out of memory while setting up (another process on it? lower "
                "--train.micro_batch_size; `nvidia-smi` shows what holds it)")
    if "invalid device ordinal" in text:
        return (f"{device} does not exist for this process (more ranks per host than visible GPUs? "
                "check slots= and CUDA_VISIBLE_DEVICES)")
    if "driver version is insufficient" in text or "cuda driver version" in text:
        return "the NVIDIA driver is too old for this MXNet's CUDA runtime (mxnet-cu110 needs driver >= 450.80)"
    if "all cuda-capable devices are busy" in text or "cudaerrordevicesunavailable" in text:
        return f"{device} is busy or in exclusive-process mode and held by another process"
    if "initialization error" in text and "cuda" in text:
        return f"CUDA failed to initialise on {device} (driver not loaded, or a forked process using CUDA)"
    return None


def wheel_problem(wheel: str, compute_capability: int) -> str | None:
    """Why MXNet wheel `wheel` cannot run on a GPU of compute capability `compute_capability` (e.g. 70), or None."""
    archs = MXNET_WHEEL_ARCHS.get(wheel)
    if archs is None:
        return None
    # SASS for sm_XY runs on sm_XZ with Z >= Y (same major), never across majors without PTX.
    if any(cc // 10 == compute_capability // 10 and cc <= compute_capability for cc in archs):
        return None
    return (f"{wheel}==1.9.1 has no kernels for compute capability {compute_capability // 10}.{compute_capability % 10} "
            f"(it carries sm_{', sm_'.join(map(str, archs))} and no PTX), and no MXNet 1.x wheel supports this GPU")


def library_problems() -> list[str]:
    """What keeps a CUDA build of MXNet from loading or from using the GPU (call before importing mxnet).

    `ldd` on libmxnet.so names every CUDA library the dynamic linker cannot find (cuDNN 8, NCCL 2, the
    CUDA 11 runtime and cuBLAS are linked dynamically); MXNet's compile-time features must include
    CUDA, CUDNN and NCCL. An empty list for the CPU build: there is nothing to check.
    """
    import importlib.util
    import shutil
    import subprocess

    spec = importlib.util.find_spec("mxnet")
    if spec is None or not spec.submodule_search_locations:
        return ["mxnet is not installed"]
    library = os.path.join(list(spec.submodule_search_locations)[0], "libmxnet.so")
    problems = []
    if os.path.exists(library) and shutil.which("ldd"):
        result = subprocess.run(["ldd", library], capture_output=True, text=True, timeout=60)
        missing = sorted({ln.split("=>")[0].strip() for ln in result.stdout.splitlines() if "not found" in ln})
        if missing:
            problems.append(f"{library} needs {', '.join(missing)}, which the dynamic linker cannot find "
                            "(install cuDNN 8 / NCCL 2 for CUDA 11, or add their lib directories to LD_LIBRARY_PATH)")
    if problems:
        return problems
    try:
        import mxnet as mx

        features = mx.runtime.Features()
    except Exception as e:  # OSError from the loader, MXNetError
        return [f"mxnet cannot be imported ({type(e).__name__}: {str(e).splitlines()[0][:160]})"]
    if features.is_enabled("CUDA"):
        absent = [name for name in ("CUDNN", "NCCL") if not features.is_enabled(name)]
        if absent:
            problems.append(f"this MXNet was built without {' and '.join(absent)} (use the mxnet-cu110/-cu112 wheel)")
    return problems


# ------------------------------------------------------------------------ what only a GPU can tell


def _loaded_library(fragment: str) -> ctypes.CDLL | None:
    """A shared library this process has loaded whose file name contains `fragment` (libcudart, libcudnn, ...)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if fragment in line and "/" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


def versions() -> dict:
    """Driver, CUDA runtime, cuDNN and NCCL versions as MXNet loaded them (call after importing mxnet)."""
    out: dict = {}
    cudart = _loaded_library("libcudart")
    if cudart is not None:
        value = ctypes.c_int()
        if cudart.cudaRuntimeGetVersion(ctypes.byref(value)) == 0:
            out["cuda_runtime"] = f"{value.value // 1000}.{value.value % 1000 // 10}"
        if cudart.cudaDriverGetVersion(ctypes.byref(value)) == 0:
            out["cuda_driver_api"] = f"{value.value // 1000}.{value.value % 1000 // 10}"
    cudnn = _loaded_library("libcudnn")
    if cudnn is not None:
        cudnn.cudnnGetVersion.restype = ctypes.c_size_t
        v = cudnn.cudnnGetVersion()
        out["cudnn"] = f"{v // 1000}.{v % 1000 // 100}.{v % 100}"
    nccl = _loaded_library("libnccl")
    if nccl is not None:
        value = ctypes.c_int()
        if nccl.ncclGetVersion(ctypes.byref(value)) == 0:
            v = value.value  # 2.8.4 -> 2804 (before 2.9) or 20904 (from 2.9)
            out["nccl"] = f"{v // 10000}.{v % 10000 // 100}.{v % 100}" if v >= 10000 else f"{v // 1000}.{v % 1000 // 100}.{v % 100}"
    return out


def device_properties(index: int) -> dict:
    """Name, compute capability and memory of visible GPU `index` (through MXNet's CUDA runtime)."""
    cudart = _loaded_library("libcudart")
    props: dict = {"index": index}
    if cudart is None:
        return props
    major, minor = ctypes.c_int(), ctypes.c_int()
    # cudaDevAttrComputeCapabilityMajor = 75, ...Minor = 76 (cuda_runtime_api.h)
    if cudart.cudaDeviceGetAttribute(ctypes.byref(major), 75, index) == 0 and \
            cudart.cudaDeviceGetAttribute(ctypes.byref(minor), 76, index) == 0:
        props["compute_capability"] = major.value * 10 + minor.value
    import mxnet as mx

    free, total = mx.context.gpu_memory_info(index)
    props["memory_gb"] = round(total / 2**30, 1)
    props["free_gb"] = round(free / 2**30, 1)
    return props


def probe(index: int) -> str | None:
    """Run a float16 FullyConnected forward and backward on visible GPU `index`; None if it works, else why not.

    Counting GPUs proves nothing: a wheel without kernels for the GPU, a driver that is too old, or a
    device held by another process only fail when a kernel runs and its result is read back.
    """
    import mxnet as mx

    try:
        ctx = mx.gpu(index)
        x = mx.nd.ones((8, 64), ctx=ctx, dtype="float16")
        w = mx.nd.ones((32, 64), ctx=ctx, dtype="float16") * 0.5
        w.attach_grad()
        with mx.autograd.record():
            y = mx.nd.FullyConnected(x, w, num_hidden=32, no_bias=True)
        y.backward()
        forward, gradient = float(y.asnumpy()[0, 0]), float(w.grad.asnumpy()[0, 0])
    except mx.base.MXNetError as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return cuda_failure(str(e), f"GPU {index}") or text[:200]
    if forward != 32.0 or gradient != 8.0:  # 64 x 1 x 0.5; d(sum y)/dw = 8 rows of ones
        return f"GPU {index} computed wrong values (forward {forward}, gradient {gradient}; expected 32, 8)"
    return None


def visible_devices() -> str | None:
    return os.environ.get("CUDA_VISIBLE_DEVICES")

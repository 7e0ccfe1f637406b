"""`kobert-pretrain doctor`: preflight checks on this machine or on every host of a hostfile.

Per host: Python and package versions, the Horovod build (frameworks, controllers, tensor
operations), visible GPUs, free disk in the run directory, and whether the shards and the
vocabulary can be read. With --gpu, every visible GPU runs a float16 FullyConnected forward and
backward and reads the result back, and the row shows the compute capabilities, the smallest GPU
memory, and the driver, CUDA runtime, cuDNN and NCCL versions MXNet loaded. With several hosts, versions that differ between hosts are flagged too.
One table; exit status 1 if anything is wrong.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from kobert_pretrain.errors import UserError

PACKAGES = ("mxnet", "mxnet-cu110", "mxnet-cu112", "gluonnlp", "horovod", "numpy", "sentencepiece", "kobert-pretrain")
MARKER = "KOBERT_DOCTOR "


def local_report(run_dir: str | None, shards: str | None, vocab: str | None, min_free_gb: float,
                 need_gpu: bool) -> dict:
    report: dict = {"host": socket.gethostname(), "python": platform.python_version(), "problems": []}
    problems = report["problems"]
    for name in PACKAGES:
        try:
            report[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            report[name] = None
    if not (report["mxnet"] or report["mxnet-cu110"] or report["mxnet-cu112"]):
        problems.append("MXNet is not installed")
    if need_gpu:
        from kobert_pretrain.gpu import library_problems

        problems.extend(library_problems())
    try:
        import horovod.mxnet as hvd

        ops = [n for n, f in (("NCCL", hvd.nccl_built), ("Gloo", hvd.gloo_built), ("MPI", hvd.mpi_built))
               if f()]
        report["horovod_ops"] = "+".join(ops) or "none"
        if not hvd.gloo_built() and not hvd.mpi_built():
            problems.append("Horovod has no controller (Gloo or MPI)")
        if need_gpu and not hvd.nccl_built():
            problems.append("Horovod was built without NCCL (GPU allreduce); see `make install-gpu`")
    except Exception as e:  # ImportError, or a library built against another MXNet
        report["horovod_ops"] = "missing"
        problems.append(f"horovod.mxnet cannot be imported ({type(e).__name__}: {str(e)[:80]})")
    try:
        import mxnet as mx

        report["gpus"] = mx.context.num_gpus()
    except Exception as e:
        report["gpus"] = 0
        problems.append(f"mxnet cannot be imported ({str(e)[:80]})")
    if need_gpu and not report["gpus"]:
        problems.append("no GPU visible to MXNet (CUDA driver, CUDA_VISIBLE_DEVICES, mxnet-cu110?)")
    elif need_gpu:
        report.update(_gpu_report(report["gpus"], report, problems))
    if run_dir:
        existing = Path(run_dir)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            # A run directory can neither be a file nor be created below one.
            problems.append(f"--run-dir {run_dir}: {existing} is a file, not a directory")
        else:
            free = shutil.disk_usage(existing).free / 1e9
            report["free_gb"] = round(free, 1)
            if free < min_free_gb:
                problems.append(f"only {free:.1f} GB free under {run_dir} (want >= {min_free_gb:g})")
            if not os.access(existing, os.W_OK):
                problems.append(f"{existing} is not writable")
    for label, path, check in (("shards", shards, _check_shards), ("vocab", vocab, _check_vocab)):
        if path:
            try:
                report[label] = check(path)
            except UserError as e:
                report[label] = "unreadable"
                problems.append(str(e))
    return report


def _gpu_report(count: int, report: dict, problems: list[str]) -> dict:
    """Every visible GPU: its compute capability and memory, a float16 kernel run on it, and the CUDA stack."""
    from kobert_pretrain import gpu

    wheel = next((w for w in gpu.MXNET_WHEEL_ARCHS if report.get(w)), None)
    devices = []
    for index in range(count):
        props = gpu.device_properties(index)
        cc = props.get("compute_capability")
        problem = (gpu.wheel_problem(wheel, cc) if wheel and cc else None) or gpu.probe(index)
        if problem:
            problems.append(f"GPU {index}: {problem}")
        devices.append({**props, "ok": problem is None})
    ccs = sorted({d["compute_capability"] for d in devices if "compute_capability" in d})
    out = {"gpu_cc": ",".join(f"{cc // 10}.{cc % 10}" for cc in ccs) or "-",
           "gpu_memory_gb": min((d["memory_gb"] for d in devices if "memory_gb" in d), default=None),
           "gpu_devices": devices, "driver": _driver_version(), **gpu.versions()}
    return out


def _driver_version() -> str | None:
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.splitlines()[0].strip() if result.returncode == 0 and result.stdout.strip() else None


def _check_shards(path: str) -> str:
    from kobert_pretrain.shards import ShardSet

    shard_set = ShardSet.open(path)
    shard_set.shard(0)
    return f"{shard_set.num_instances:,} inst"


def _check_vocab(path: str) -> str:
    from kobert_pretrain.vocab import Vocab

    return f"{Vocab.load(path).size} pieces"


def remote_reports(hosts: list[tuple[str, int]], checks: dict) -> list[dict]:
    """Run `doctor --local --json` with the same `checks` (local_report's arguments) once per host under
    horovodrun and collect the reports."""
    # local_report's need_gpu is the command line's --gpu; the others are spelled as their flags.
    args = ["--gpu" if k == "need_gpu" else f"--{k.replace('_', '-')}={v}"
            for k, v in checks.items() if v not in (None, False)]
    from kobert_pretrain.launch import clean_hostfile

    with tempfile.TemporaryDirectory(prefix="kobert-doctor-") as tmp:
        hostfile = Path(tmp) / "hostfile"
        hostfile.write_text(clean_hostfile([(h, 1) for h, _ in hosts]))
        horovodrun = Path(sys.executable).with_name("horovodrun")
        cmd = [str(horovodrun) if horovodrun.exists() else "horovodrun", "-np", str(len(hosts)), "--hostfile",
               str(hostfile), "--gloo", sys.executable, "-m", "kobert_pretrain", "doctor", "--local", "--json", *args]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    reports = []
    for line in (result.stdout + result.stderr).splitlines():
        match = re.search(MARKER + r"(\{.*\})$", line)
        if match:
            reports.append(json.loads(match.group(1)))
    if len(reports) != len(hosts):
        raise UserError(f"doctor got {len(reports)} of {len(hosts)} host reports from horovodrun "
                        f"(is passwordless ssh set up, and the same venv path on every host?): "
                        f"{horovodrun_failure(result.stdout + result.stderr)}")
    return reports


def horovodrun_failure(output: str) -> str:
    """horovodrun's reason for failing, on one line: the message its traceback ends with, after the
    ssh error behind it if there is one, or else its last line of output."""
    from kobert_pretrain.launch import LauncherTraceback

    launcher = LauncherTraceback()
    shown = [ln.strip() for ln in output.splitlines(keepends=True) if launcher.feed(ln) and ln.strip()]
    summary = launcher.summary()
    ssh = [ln for ln in shown if ln.startswith("ssh:")]
    if summary:
        return f"{summary} ({ssh[-1]})" if ssh else summary
    return shown[-1] if shown else "no output"


def compare_hosts(reports: list[dict]) -> None:
    for key in ("python", *PACKAGES, "horovod_ops", "driver", "cuda_runtime", "cudnn", "nccl"):
        values = {r.get(key) for r in reports}
        if len(values) > 1:
            for r in reports:
                r["problems"].append(f"{key} differs between hosts ({', '.join(sorted(map(str, values)))})")


def table(reports: list[dict]) -> str:
    columns = ["host", "python", "mxnet", "horovod", "horovod_ops", "gpus", "free_gb", "shards", "vocab", "status"]
    if any("gpu_cc" in r for r in reports):  # doctor --gpu
        columns[6:6] = ["gpu_cc", "gpu_memory_gb", "driver", "cuda_runtime", "cudnn", "nccl"]
    rows = []
    for r in reports:
        mxnet = r.get("mxnet") or next((f"{w[6:]} {r[w]}" for w in ("mxnet-cu110", "mxnet-cu112") if r.get(w)), "-")
        row = {**r, "mxnet": mxnet, "status": "OK" if not r["problems"] else "; ".join(r["problems"])}
        rows.append([str(row.get(c, "-") if row.get(c) is not None else "-") for c in columns])
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)

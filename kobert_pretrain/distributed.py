"""The only module that imports Horovod.

`init()` returns a `Dist`: under `horovodrun` (HOROVOD_RANK in the
environment) it initialises Horovod; otherwise it is a one-process stand-in
with the same interface, so no stage needs Horovod to run on one machine.
"""

from __future__ import annotations

import atexit
import os
import sys
import zlib
from dataclasses import dataclass

import numpy as np

from kobert_pretrain.errors import UserError


@dataclass
class Dist:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    hvd: object = None  # horovod.mxnet, when running under horovodrun

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.hvd is not None

    def allreduce_sum(self, values: np.ndarray, name: str) -> np.ndarray:
        """Sum a small float64 array over all ranks (one collective; every rank must call it)."""
        values = np.asarray(values, dtype=np.float64)
        if not self.enabled:
            return values
        import mxnet as mx

        # Horovod: a tiny allreduce, synchronous once read back.
        out = self.hvd.allreduce(mx.nd.array(values, dtype="float64"), average=False, name=name)
        return out.asnumpy()

    def allreduce_sum_start(self, values: np.ndarray, name: str):
        """Start summing a small float64 array over all ranks and return at once: an MXNet NDArray that
        later MXNet operations use as soon as the sum is there (the engine orders them; Python does not
        wait) and `.asnumpy()` reads, waiting only if it is still travelling. One collective."""
        import mxnet as mx

        array = mx.nd.array(np.asarray(values, dtype=np.float64), dtype="float64")
        if not self.enabled:
            return array
        return self.hvd.allreduce(array, average=False, name=name)

    def allgather(self, values: np.ndarray, name: str) -> np.ndarray:
        """Every rank's small float64 vector, as rows (rank, ...): an allreduce of a table in which each
        rank fills only its own row, so the sums are exact copies."""
        values = np.asarray(values, dtype=np.float64)
        table = np.zeros((self.size, *values.shape))
        table[self.rank] = values
        return self.allreduce_sum(table, name=name)

    def replica_mismatch(self, arrays, name: str) -> dict[int, int]:
        """{rank: how many of `arrays` differ from rank 0's} (empty when all ranks agree bit for bit).

        Data parallelism keeps the replicas in step only while every rank applies the same update: a
        rank with other optimizer counts, another RNG or a faulty GPU drifts away silently. Compared by
        a crc32 of each array's bytes, gathered from every rank (one collective).
        """
        if not self.enabled:
            return {}
        prints = np.array([zlib.crc32(a.asnumpy().tobytes()) for a in arrays], dtype=np.float64)
        table = self.allgather(prints, name=name)
        return {r: int((table[r] != table[0]).sum()) for r in range(self.size) if (table[r] != table[0]).any()}

    def barrier(self, name: str) -> None:
        """Wait for every rank (Horovod has no barrier for MXNet: a one-element allreduce is one)."""
        self.allreduce_sum(np.zeros(1), name=f"barrier.{name}")


def configure_cpu_threads() -> None:
    """CPU threading defaults for MXNet (`configure_runtime` on a CPU); call before MXNet is imported."""
    configure_runtime("cpu", "float32")


def configure_runtime(device: str, dtype: str, bulk_size: int = 0) -> None:
    """MXNet's environment for a training rank on `device` ("cpu"/"gpu"); call before MXNet is imported.
    Settings the user made win (setdefault).

    - OpenMP: MXNet's pip build starts one thread per process here unless told otherwise, which left
      half of a 2-core machine idle (BERT-base, seq 128: 0.65 -> 1.14 sequences/s with 2 threads).
      Each rank gets its share of this host's cores.
    - Bulk execution: up to 1,000 operators per engine push on CPU cut scheduling overhead (1.14 ->
      1.32 sequences/s; benchmarks/RESULTS.md). On GPU MXNet's default (15) stays: a bulk segment
      runs as one engine operation, and Horovod's allreduce of a gradient can only start after the
      segment that produced it, so large bulks may hold back the overlap of backward and allreduce
      (`train.mxnet_bulk_size` sets it; scripts/gpu_check.sh measures 15 vs 1000).
    - GPU memory pool "Round": batches of varying length (bucketing) ask for many sizes; rounding
      them to powers of two lets freed blocks be reused instead of growing the pool.
    - float16: MXNET_SAFE_ACCUMULATION=1, float32 accumulation inside float16 reductions (softmax,
      LayerNorm, sums), for every float16 run and not only those started by scripts/03_train.sh.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ranks_here = int(os.environ.get("HOROVOD_LOCAL_SIZE", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // max(1, ranks_here))))
    bulk = bulk_size or (1000 if device == "cpu" else 0)
    if bulk:
        os.environ.setdefault("MXNET_EXEC_BULK_EXEC_MAX_NODE_TRAIN_FWD", str(bulk))
        os.environ.setdefault("MXNET_EXEC_BULK_EXEC_MAX_NODE_TRAIN_BWD", str(bulk))
    if device == "gpu":
        os.environ.setdefault("MXNET_GPU_MEM_POOL_TYPE", "Round")
    if dtype == "float16":
        os.environ.setdefault("MXNET_SAFE_ACCUMULATION", "1")


def planned_device(setting: str) -> str:
    """"cpu" or "gpu" for `train.device` (auto/cpu/gpu) without importing MXNet: auto means a GPU when a
    CUDA build of MXNet is installed and CUDA_VISIBLE_DEVICES does not hide every device."""
    if setting != "auto":
        return setting
    from importlib import metadata

    for wheel in ("mxnet-cu110", "mxnet-cu112"):
        try:
            metadata.version(wheel)
        except metadata.PackageNotFoundError:
            continue
        return "cpu" if os.environ.get("CUDA_VISIBLE_DEVICES", "x").strip() in ("", "-1") else "gpu"
    return "cpu"


def under_horovodrun() -> bool:
    return "HOROVOD_RANK" in os.environ


def init() -> Dist:
    if not under_horovodrun():
        return Dist()
    try:
        import horovod.mxnet as hvd
    except ImportError as e:
        raise UserError(f"running under horovodrun, but horovod.mxnet cannot be imported ({e}): run `make install`") from None
    # Horovod: initialise, then read this process's place in the job.
    hvd.init()
    # hvd.init() registers Horovod's shutdown with atexit; registered after it, this runs before it.
    atexit.register(_finish_pending_work)
    return Dist(rank=hvd.rank(), size=hvd.size(), local_rank=hvd.local_rank(), local_size=hvd.local_size(), hvd=hvd)


def _finish_pending_work() -> None:
    """At exit, wait for MXNet's pending operations while Horovod still runs.

    Horovod's collectives run asynchronously in MXNet's engine: `broadcast_parameters` returns before
    the broadcast is done. A rank that stops soon after (a refused resume, a run already at
    max_steps) exits with them still queued. atexit runs Horovod's shutdown (registered by
    hvd.init()) before MXNet's `_notify_shutdown` (registered when mxnet is imported), so the
    queued collectives failed with "Horovod has been shut down" and MXNet's engine drain raised it
    as an "Exception ignored in atexit callback" traceback on every rank. Waiting here first lets
    them finish (or fail) while Horovod is up, and clears the engine's recorded errors.
    """
    import mxnet as mx

    try:
        mx.nd.waitall()
    except mx.base.MXNetError as e:
        # Another rank stopped first and took Horovod down with it: expected when a job ends on an
        # error, and that error has been reported already. Anything else is worth one line.
        message = str(e).strip()
        if "Horovod has been shut down" not in message:
            first_line = message.splitlines()[0] if message else type(e).__name__
            print(f"kobert-pretrain: warning: unfinished work failed at exit: {first_line[:300]}",
                  file=sys.stderr, flush=True)


# Horovod: the environment variable that makes `DistributedTrainer` average inside the allreduce.
AVERAGE_IN_ALLREDUCE = "KOBERT_HOROVOD_AVERAGE"


def gluon_trainer(dist: Dist, params, optimizer: str, optimizer_params: dict, fp16_allreduce: bool,
                  allreduce_groups: int):
    """(the Gluon trainer, whether its allreduce averages gradients) for `params` on this job.

    One process: a plain `gluon.Trainer` (gradients are summed, never averaged). Under Horovod every
    rank first takes rank 0's parameters, and a `DistributedTrainer` allreduces the gradients
    (optionally fp16-compressed, in `allreduce_groups` groups); `optim.update_scaling` is correct
    whether it summed or averaged them.
    """
    if not dist.enabled:
        import mxnet as mx

        trainer = mx.gluon.Trainer(params, optimizer, optimizer_params, kvstore=None, update_on_kvstore=False)
        return trainer, False
    hvd = dist.hvd
    # Horovod: every rank starts from rank 0's parameters.
    hvd.broadcast_parameters(params, root_rank=0)
    # Horovod: gradients are allreduced inside the trainer (optionally fp16-compressed, grouped).
    compression = hvd.Compression.fp16 if fp16_allreduce else hvd.Compression.none
    trainer = hvd.DistributedTrainer(params, optimizer, optimizer_params, compression=compression,
                                     num_groups=allreduce_groups)
    if os.environ.get(AVERAGE_IN_ALLREDUCE) == "1":
        average_inside_allreduce(trainer)
    return trainer, not trainer._average_in_framework


def average_inside_allreduce(trainer) -> None:
    """Make a Horovod `DistributedTrainer` average inside the allreduce, as builds with NCCL >= 2.10 do.

    A test seam (KOBERT_HOROVOD_AVERAGE=1): CPU builds with Gloo always sum and let the framework
    divide, so without it the CPU tests could not exercise the other path of the clipping arithmetic
    (`optim.update_scaling`). The three private fields are those `DistributedTrainer.__init__` sets.
    """
    trainer._average_in_framework = False
    trainer._scale = 1.0
    trainer._postscale_factor = 1.0

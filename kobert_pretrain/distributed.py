"""The only module that imports Horovod.

`init()` returns a `Dist`: under `horovodrun` (HOROVOD_RANK in the
environment) it initialises Horovod; otherwise it is a one-process stand-in
with the same interface, so no stage needs Horovod to run on one machine.
"""

from __future__ import annotations

import os
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

    def barrier(self, name: str) -> None:
        """Wait for every rank (Horovod has no barrier for MXNet: a one-element allreduce is one)."""
        self.allreduce_sum(np.zeros(1), name=f"barrier.{name}")

    def all_agree(self, flag: bool, name: str) -> bool:
        """True on every rank if `flag` is True on any rank (stop / save decisions)."""
        return bool(self.allreduce_sum(np.array([float(flag)]), name=f"agree.{name}")[0] > 0)


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
    return Dist(rank=hvd.rank(), size=hvd.size(), local_rank=hvd.local_rank(), local_size=hvd.local_size(), hvd=hvd)

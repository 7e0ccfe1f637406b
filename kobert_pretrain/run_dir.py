"""The run directory of one training run: its layout and the rules that keep it one run's.

    RUN_DIR/
        config.json      the resolved config, written by `train` at set-up (rank 0)
        metrics.jsonl    one JSON record per log line and evaluation (the test oracle)
        checkpoints/     step-XXXXXXXX/ directories, see checkpoint.py
        tensorboard/     event files when log.tensorboard is on
        .lock            held (flock) by the process that trains into the directory

A directory is "ours" when it is new, empty, or holds an earlier run (a
config.json written by `train`, or checkpoints/), which this one resumes.
SIGTERM, SIGUSR1 and a first Ctrl-C (SIGINT) mean "checkpoint at the next step
boundary, then exit 75" while `PreemptionSignals` is entered; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import sys
from pathlib import Path

import numpy as np

from kobert_pretrain.errors import UserError
from kobert_pretrain.fsutil import atomic_write_json, atomic_write_text
from kobert_pretrain.text import warn

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
LOCK = ".lock"

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM/SIGUSR1/SIGINT after saving a checkpoint; resume later
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Preempted(Exception):
    """Raised after the checkpoint that a SIGTERM or SIGUSR1 asked for has been written."""

    def __init__(self, signal_name: str, step: int, path):
        self.signal_name, self.step, self.path = signal_name, step, path
        super().__init__(f"{signal_name}: checkpoint of step {step} written; resume with --resume auto")


class RunDir:
    """The paths of a run directory and what may be done with them."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_handle = None

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD

    @classmethod
    def of_checkpoint(cls, checkpoint_path: str | Path) -> "RunDir":
        """The run directory a checkpoint directory RUN_DIR/checkpoints/step-XXXXXXXX belongs to."""
        return cls(Path(checkpoint_path).parent.parent)

    def holds_run(self, has_checkpoints: bool) -> bool:
        """Whether an earlier run left something a fresh start (`--resume none`) would overwrite."""
        return has_checkpoints or self.metrics.exists()

    def problem(self) -> str | None:
        """Why this directory cannot hold this run: None if it is new, empty, or an earlier run (its
        config.json written by `train`, or its checkpoints/), which this one resumes. Anything else is not
        ours to write in."""
        run_dir = self.path
        if run_dir.exists() and not run_dir.is_dir():
            return f"--out {run_dir} is a file, not a run directory"
        if not run_dir.is_dir():
            return None
        names = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK)  # .lock: a run starting right now
        if not names or self.checkpoints.is_dir():
            return None
        try:
            config = json.loads(self.config.read_text(encoding="utf-8"))
            if isinstance(config, dict) and {"train", "model"} <= config.keys():
                return None
        except (OSError, ValueError):
            pass
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        return f"--out {run_dir} already holds files that are not a training run ({shown}); choose a new directory"

    def lock(self) -> None:
        """Take an exclusive lock on RUN_DIR/.lock, held until `unlock`: a second `train` into the same
        directory would interleave metrics and overwrite checkpoints. The kernel drops it when the process dies."""
        run_dir = self.path
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / LOCK, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UserError(f"{run_dir} is being trained by {holder}; two runs in one directory would overwrite "
                            "each other's checkpoints: wait for it, stop it, or choose another --out") from None
        except OSError as e:  # a filesystem without locks (some NFS set-ups): go on, but say so
            warn(f"cannot lock {run_dir / LOCK} ({e.strerror or e}); make sure no other run writes there")
            self._lock_handle = handle
            return
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._lock_handle = handle

    def lock_for_job(self, dist) -> None:
        """`lock` on rank 0, and a UserError on every rank if rank 0 could not take it."""
        lock_error = None
        if dist.is_root:
            try:
                self.lock()
            except UserError as e:
                lock_error = e
        # Horovod: only rank 0 takes the lock, so every rank must learn whether it got it.
        if dist.enabled and dist.allreduce_sum(np.array([lock_error is not None]), "setup.lock")[0]:
            raise lock_error or UserError(f"{self.path} is in use by another training process (see rank 0)")
        if lock_error is not None:
            raise lock_error

    def unlock(self) -> None:
        if self._lock_handle is not None:
            self._lock_handle.close()  # closing the descriptor releases the flock
            self._lock_handle = None

    def write_config(self, config: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.config, config)

    def truncate_metrics(self, step: int) -> None:
        """Drop metrics of steps after `step` (the checkpoint resumed from): the resumed run logs them again."""
        path = self.metrics
        if not path.exists():
            return
        keep = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short when the previous run was killed
            if record.get("step", 0) <= step:
                keep.append(line)
        atomic_write_text(path, "".join(ln + "\n" for ln in keep))


class PreemptionSignals:
    """While entered, SIGTERM, SIGUSR1 and a first SIGINT only record their name in `received` (the trainer
    checkpoints at the next step boundary and exits 75); a second SIGINT (Ctrl-C twice) raises
    KeyboardInterrupt at once, as without a handler. Leaving restores the previous handlers."""

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def __enter__(self) -> "PreemptionSignals":
        def handler(signum, frame):
            name = signal.Signals(signum).name
            if signum == signal.SIGINT and self.received is not None:
                raise KeyboardInterrupt
            self.received = self.received or name
            again = " (Ctrl-C again to stop now, without it)" if signum == signal.SIGINT else ""
            print(f"train: {name} received: saving a checkpoint at the next step boundary, then exiting{again}",
                  file=sys.stderr, flush=True)

        for sig in PREEMPT_SIGNALS:
            self._previous[sig] = signal.signal(sig, handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

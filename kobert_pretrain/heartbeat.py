"""Progress reports from training ranks, and the watchdog in `kobert-pretrain launch` that reads them.

A hung rank (a stopped process, an NCCL deadlock, a stuck filesystem) is otherwise found only by
timeouts: Gloo's (120 s) for collectives on CPU, Horovod's stall shutdown (600 s) under NCCL, whose
collectives ignore the Gloo timeout. Every idle minute costs the whole cluster.

Rank side: under `launch` (which sets KOBERT_HEARTBEAT_S), a daemon thread of each rank writes one
line `KOBERT_HEARTBEAT rank step phase` to its stdout every KOBERT_HEARTBEAT_S seconds; the trainer
only sets `step` and `phase` (setup, train, save, eval, done), which costs nothing per step. The line
goes through horovodrun's output forwarding, so it works across hosts without a shared filesystem,
and it is written with one os.write so it never interleaves with other output.

Launcher side: `Watchdog` sees each rank's last heartbeat and step and decides, from the heartbeats
alone, whether the job is hung:
- a rank that has sent heartbeats and then falls silent for `silence_s` is stopped or frozen (its
  thread no longer runs: SIGSTOP, a host that vanished, a process stuck in the kernel);
- no rank finishing a step for `max(hang_s, hang_factor x median step time)` while every rank is
  training is a hang of a collective or of one rank's data or filesystem; while any rank is setting up,
  saving a checkpoint or evaluating, the limit is `slow_s` instead, so a slow save is no false alarm.
"""

from __future__ import annotations

import os
import re
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field

ENV_INTERVAL = "KOBERT_HEARTBEAT_S"
PREFIX = "KOBERT_HEARTBEAT "
PHASES = ("setup", "train", "save", "eval", "done")
_LINE = re.compile(r"^(?:[^\[]{0,40})\[\d+(?:,\d+)?\]<stdout>:" + PREFIX + r"(\d+) (-?\d+) (\w+)\s*$")


class Heartbeat:
    """A rank's progress reporter: `hb.step = n` and `hb.phase = "save"` are all the trainer does."""

    def __init__(self, rank: int, interval_s: float, fd: int = 1):
        self.rank = rank
        self.step = 0
        self.phase = "setup"
        self._interval = interval_s
        self._fd = fd
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="kobert-heartbeat", daemon=True)
        self._thread.start()

    @classmethod
    def from_env(cls, rank: int) -> Heartbeat | None:
        """A heartbeat when running under `launch`, else None (no lines in a user's own horovodrun output)."""
        value = os.environ.get(ENV_INTERVAL)
        return cls(rank, float(value)) if value and float(value) > 0 else None

    def _write(self) -> None:
        try:
            os.write(self._fd, f"{PREFIX}{self.rank} {self.step} {self.phase}\n".encode())
        except OSError:  # the launcher is gone; the rank finds out soon enough on its own
            pass

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            self._write()

    def close(self) -> None:
        """Report `done` once and stop: a rank that finished is not a silent one."""
        self.phase = "done"
        self._stop.set()
        self._write()


def parse(line: str) -> tuple[int, int, str] | None:
    """(rank, step, phase) from a heartbeat line as horovodrun forwards it (`[1]<stdout>:KOBERT_HEARTBEAT ...`)."""
    match = _LINE.match(line)
    if match is None or match.group(3) not in PHASES:
        return None
    return int(match.group(1)), int(match.group(2)), match.group(3)


@dataclass
class _Rank:
    seen: float
    step: int
    phase: str


@dataclass
class Watchdog:
    silence_s: float = 30.0      # no heartbeat at all from a rank that was beating
    hang_s: float = 120.0        # floor of the no-progress limit while all ranks train
    hang_factor: float = 20.0    # ... or this many median step times, if larger
    slow_s: float = 900.0        # the no-progress limit while a rank sets up, saves or evaluates
    ranks: dict[int, _Rank] = field(default_factory=dict)
    _top_step: int | None = None
    _progress_at: float | None = None
    _busy_at: float = float("-inf")  # the last beat of a rank setting up, saving or evaluating
    _step_times: deque = field(default_factory=lambda: deque(maxlen=50))

    @property
    def enabled(self) -> bool:
        return self.silence_s > 0 or self.hang_s > 0

    def feed(self, line: str, now: float) -> bool:
        """Take a line of the job's output; True if it was a heartbeat (not to be shown)."""
        beat = parse(line)
        if beat is None:
            return False
        rank, step, phase = beat
        self.ranks[rank] = _Rank(now, step, phase)
        if phase not in ("train", "done"):
            self._busy_at = now
        if self._top_step is None or step > self._top_step:
            if self._top_step is not None and self._progress_at is not None and phase == "train":
                # Seconds per step, from heartbeats that arrive once per interval: a coarse but honest rate.
                self._step_times.append((now - self._progress_at) / (step - self._top_step))
            self._top_step, self._progress_at = step, now
        elif self._progress_at is None:
            self._progress_at = now
        return True

    def hang_limit(self) -> float:
        """Seconds without a finished step that count as a hang while every rank trains."""
        typical = statistics.median(self._step_times) if self._step_times else 0.0
        return max(self.hang_s, self.hang_factor * typical)

    def verdict(self, now: float) -> str | None:
        """Why the job is hung, in one sentence, or None."""
        live = {r: s for r, s in self.ranks.items() if s.phase != "done"}
        if not live:
            return None
        if self.silence_s > 0:
            silent = sorted(r for r, s in live.items() if now - s.seen > self.silence_s)
            if silent:
                quiet = now - max(live[r].seen for r in silent)
                return (f"rank {', '.join(map(str, silent))} stopped responding: no heartbeat for {quiet:.0f}s "
                        f"(last at step {live[silent[0]].step}, {live[silent[0]].phase}; a stopped or frozen "
                        "process, or a lost host)")
        if self.hang_s <= 0 or self._progress_at is None:
            return None
        busy = sorted({s.phase for s in live.values()} - {"train"})
        # Time spent saving or evaluating counts against the slow limit only: the training limit
        # starts again when the last rank is back to training.
        limit = self.slow_s if busy else self.hang_limit()
        idle = now - (self._progress_at if busy else max(self._progress_at, self._busy_at))
        if idle <= limit:
            return None
        steps = {s.step for s in live.values()}
        if len(steps) == 1:
            where = f"all ranks at step {steps.pop()}: a collective or the data of one rank is stuck"
        else:
            low = min(steps)
            behind = sorted(r for r, s in live.items() if s.step == low)
            where = f"rank {', '.join(map(str, behind))} stopped progressing at step {low}, the others reached {max(steps)}"
        during = f" while {'/'.join(busy)}" if busy else ""
        return f"no training step finished for {idle:.0f}s{during} (limit {limit:.0f}s); {where}"


def clock() -> float:
    return time.monotonic()

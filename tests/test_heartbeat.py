"""The heartbeat protocol: what a rank writes, and the launcher watchdog's verdicts on hand-made timelines."""

from __future__ import annotations

import os
import time

from kobert_pretrain.heartbeat import Heartbeat, Watchdog, parse


def beat(rank, step, phase="train"):
    return f"[{rank}]<stdout>:KOBERT_HEARTBEAT {rank} {step} {phase}\n"


def test_parse_forwarded_lines_only():
    assert parse(beat(1, 40)) == (1, 40, "train")
    assert parse("[0]<stdout>:KOBERT_HEARTBEAT 0 7 save\n") == (0, 7, "save")
    assert parse("[0]<stderr>:KOBERT_HEARTBEAT 0 7 save\n") is None      # only stdout carries them
    assert parse("[0]<stdout>:KOBERT_HEARTBEAT 0 7 sleeping\n") is None  # unknown phase
    assert parse("step 40/40 | mlm_loss 6.5\n") is None


def test_rank_writes_beats_and_done():
    read_fd, write_fd = os.pipe()
    hb = Heartbeat(rank=3, interval_s=0.05, fd=write_fd)
    hb.phase, hb.step = "train", 12
    time.sleep(0.3)
    hb.close()
    os.close(write_fd)
    lines = os.read(read_fd, 1 << 16).decode().splitlines()
    assert len(lines) >= 3
    assert lines[-1] == "KOBERT_HEARTBEAT 3 12 done"
    assert set(lines[1:-1]) <= {"KOBERT_HEARTBEAT 3 12 train", "KOBERT_HEARTBEAT 3 0 setup"}


def run(watchdog, timeline):
    """Feed (time, line) pairs; return the first verdict and when it came (checked every 0.5 s)."""
    t = 0.0
    events = sorted(timeline)
    end = events[-1][0]
    i = 0
    while t <= end:
        while i < len(events) and events[i][0] <= t:
            assert watchdog.feed(events[i][1], events[i][0])
            i += 1
        verdict = watchdog.verdict(t)
        if verdict:
            return t, verdict
        t += 0.5
    return None, None


def steady(ranks, until, step_s=0.1, start=0, first_step=0):
    """Beats once a second from each rank, training at step_s seconds per step."""
    return [(t, beat(r, first_step + int((t - start) / step_s))) for r in ranks for t in range(start, until + 1)]


def test_a_stopped_rank_is_found_by_its_silence():
    timeline = steady([0, 1], until=10)
    # rank 1 stops (SIGSTOP): no more beats; rank 0 keeps beating but makes no progress
    timeline += [(t, beat(0, 100)) for t in range(11, 200)]
    when, verdict = run(Watchdog(), timeline)
    assert 40 <= when <= 41.5
    assert verdict.startswith("rank 1 stopped responding: no heartbeat for 30s (last at step 100, train")


def test_no_progress_while_training_is_a_hang_after_the_floor():
    timeline = steady([0, 1], until=10)
    timeline += [(t, beat(r, 100)) for r in (0, 1) for t in range(11, 400)]  # alive, stuck in a collective
    when, verdict = run(Watchdog(), timeline)
    assert 130 <= when <= 131.5  # progress last seen at t=10, limit max(120 s, 20 x 0.1 s)
    assert verdict == "no training step finished for 120s (limit 120s); all ranks at step 100: a collective or the data of one rank is stuck"


def test_the_limit_follows_the_measured_step_time():
    timeline = [(t, beat(r, t // 10)) for r in (0, 1) for t in range(0, 101)]  # 10 s per step
    timeline += [(t, beat(r, 10)) for r in (0, 1) for t in range(101, 600)]
    watchdog = Watchdog()
    when, verdict = run(watchdog, timeline)
    assert watchdog.hang_limit() == 200  # 20 x 10 s beats the 120 s floor
    assert 300 <= when <= 301.5


def test_the_laggard_is_named():
    timeline = steady([0, 1], until=10)
    timeline += [(t, beat(0, 101)) for t in range(11, 400)] + [(t, beat(1, 100)) for t in range(11, 400)]
    _, verdict = run(Watchdog(), timeline)
    assert verdict.endswith("rank 1 stopped progressing at step 100, the others reached 101")


def test_a_slow_checkpoint_save_is_no_hang():
    timeline = steady([0, 1], until=10)
    # rank 0 saves for 600 s while rank 1 waits for it in the next step's allreduce
    timeline += [(t, beat(0, 100, "save")) for t in range(11, 611)] + [(t, beat(1, 100)) for t in range(11, 611)]
    timeline += steady([0, 1], until=700, start=611, first_step=100)
    when, verdict = run(Watchdog(), timeline)
    assert verdict is None


def test_a_save_that_never_ends_is_a_hang_after_the_slow_limit():
    timeline = steady([0, 1], until=10)
    timeline += [(t, beat(0, 100, "save")) for t in range(11, 1000)] + [(t, beat(1, 100)) for t in range(11, 1000)]
    when, verdict = run(Watchdog(), timeline)
    assert 910 <= when <= 911.5
    assert "while save (limit 900s)" in verdict


def test_finished_ranks_and_set_up_are_not_hangs():
    timeline = [(t, beat(r, 0, "setup")) for r in (0, 1) for t in range(0, 300)]  # a long resume
    timeline += [(300, beat(0, 20, "done")), (300, beat(1, 20, "done"))]
    assert run(Watchdog(), timeline) == (None, None)


def test_off_switches():
    timeline = steady([0, 1], until=10) + [(t, beat(0, 100)) for t in range(11, 2000)]
    assert run(Watchdog(silence_s=0, hang_s=0), timeline) == (None, None)

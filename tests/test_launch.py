"""`kobert-pretrain launch`: hostfiles, restart after a rank dies, pre-emption, no restart on user errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from kobert_pretrain.errors import UserError
from kobert_pretrain.launch import _with_resume_auto, clean_hostfile, is_rank_process, parse_hostfile, parse_hosts

from conftest import ROOT, assert_one_line_error, final_params, read_metrics, run_cli
from test_horovod_shards import horovodrun

TRAIN = ["--config", "configs/debug.toml", "--train.max_steps=40", "--log.interval=1", "--checkpoint.interval=4",
         "--train.micro_batch_size=16", "--log.tensorboard=false"]


def test_hostfile_with_comments_and_blank_lines(tmp_path):
    f = tmp_path / "hosts"
    f.write_text("# two V100 nodes\n\nnode1 slots=8   # first\nnode2:4\n  node3\n")
    hosts = parse_hostfile(f)
    assert hosts == [("node1", 8), ("node2", 4), ("node3", 1)]
    assert clean_hostfile(hosts) == "node1 slots=8\nnode2 slots=4\nnode3 slots=1\n"


@pytest.mark.parametrize("text,line", [("node1 slots=8\nnode2 slots=x\n", 2), ("\n# c\nnode1 8 9\n", 3),
                                       ("node1 slots=0\n", 1), ("node1 slots=1025\n", 1),
                                       ("# c\nnode1 slots=99999999999999999999\n", 2),
                                       ("node1 slots=4\nnode2\n\nnode1:4\n", 4)])
def test_bad_hostfile_lines_are_named(tmp_path, text, line):
    f = tmp_path / "hosts"
    f.write_text(text)
    with pytest.raises(UserError, match=f"line {line}"):
        parse_hostfile(f)


def test_duplicate_hosts_and_absurd_slots_are_explained(tmp_path):
    f = tmp_path / "hosts"
    f.write_text("node1 slots=4\n# again\nnode1 slots=4\n")
    with pytest.raises(UserError) as caught:
        parse_hostfile(f)
    assert str(caught.value) == (f"hostfile {f} line 3: host node1 is already listed on line 1; "
                                 "list each host once, with all its slots")
    f.write_text("node1 slots=99999999999999999999\n")
    with pytest.raises(UserError) as caught:
        parse_hostfile(f)
    assert str(caught.value) == (f"hostfile {f} line 1: slots must be between 1 and 1024, got 99999999999999999999 "
                                 "in 'node1 slots=99999999999999999999'")
    with pytest.raises(UserError) as caught:
        parse_hosts("a:2,b:2,a:1")
    assert str(caught.value) == "-H 'a:2,b:2,a:1': host a is listed twice; list each host once, with all its slots"
    with pytest.raises(UserError, match="slots must be between 1 and 1024, got 2000 in 'b:2000'"):
        parse_hosts("a:2,b:2000")
    assert parse_hosts("a:1024") == [("a", 1024)]


# horovodrun's output when a rank exits with status 2 (Horovod 0.28.1, Gloo), abridged in the middle.
HOROVODRUN_USER_ERROR = """\
[0]<stderr>:kobert-pretrain: error: invalid config: train.max_steps: expected an integer, got 'abc'
Process 0 exit with status code 2.
Terminating remaining workers after failure of Process 0.
Traceback (most recent call last):
  File "/venv/bin/horovodrun", line 8, in <module>
    sys.exit(run_commandline())
             ^^^^^^^^^^^^^^^^^
  File "/venv/lib/python3.11/site-packages/horovod/runner/gloo_run.py", line 284, in launch_gloo
    raise RuntimeError('Horovod detected that one or more processes exited with non-zero '
RuntimeError: Horovod detected that one or more processes exited with non-zero status, thus causing the job \
to be terminated. The first process to do so was:
Process name: 0
Exit code: 2

[1]<stderr>:a rank line after the traceback
"""


def test_horovodrun_traceback_is_held_back_and_condensed():
    from kobert_pretrain.launch import LauncherTraceback

    launcher = LauncherTraceback()
    shown = [ln for ln in HOROVODRUN_USER_ERROR.splitlines(keepends=True) if launcher.feed(ln)]
    assert "".join(shown) == (
        "[0]<stderr>:kobert-pretrain: error: invalid config: train.max_steps: expected an integer, got 'abc'\n"
        "Process 0 exit with status code 2.\n"
        "Terminating remaining workers after failure of Process 0.\n"
        "[1]<stderr>:a rank line after the traceback\n")
    assert launcher.summary() == (
        "RuntimeError: Horovod detected that one or more processes exited with non-zero status, thus causing the job "
        "to be terminated. The first process to do so was: Process name: 0 Exit code: 2")
    keep = LauncherTraceback(keep=True)
    assert all(keep.feed(ln) for ln in HOROVODRUN_USER_ERROR.splitlines(keepends=True))
    assert keep.summary() is None
    assert LauncherTraceback().summary() is None


def test_doctor_condenses_horovodrun_failures():
    from kobert_pretrain.doctor import horovodrun_failure

    ssh = ("ssh not successful for host node9:\nssh: Could not resolve hostname node9: Name or service not known\n\n"
           "Traceback (most recent call last):\n  File \"/venv/bin/horovodrun\", line 8, in <module>\n"
           "    sys.exit(run_commandline())\nRuntimeError: could not connect to some hosts via ssh\n")
    assert horovodrun_failure(ssh) == ("RuntimeError: could not connect to some hosts via ssh "
                                       "(ssh: Could not resolve hostname node9: Name or service not known)")
    assert horovodrun_failure("some output\nlast words\n") == "last words"
    assert horovodrun_failure("") == "no output"


@pytest.mark.horovod
def test_launch_user_error_shows_the_rank_error_without_horovodrun_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "kobert_pretrain", "launch", "-np", "1", "-H", "localhost:1",
                             "--", "train", "--config", "configs/debug.toml", "--shards", str(tmp_path / "s"),
                             "--out", str(tmp_path / "r"), "--train.max_steps=abc"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("launch: attempt 1: ")
    assert lines[1:] == [
        "[0]<stderr>:kobert-pretrain: error: invalid config: train.max_steps: expected an integer, got 'abc'",
        "Process 0 exit with status code 2.",
        "Terminating remaining workers after failure of Process 0.",
        "launch: the job failed on a user error (status 2, see above); restarting would not help"]


def test_extra_horovodrun_arguments_are_passed(tmp_path):
    from kobert_pretrain.launch import LaunchConfig, horovodrun_command

    cfg = LaunchConfig(num_proc=2, hosts=[("localhost", 2)], command=["train", "--out", "x"],
                       horovodrun_args=["--timeline-filename=/tmp/t.json"])
    cmd = horovodrun_command(cfg, tmp_path / "hostfile", resume_auto=False)
    assert "--timeline-filename=/tmp/t.json" in cmd
    assert cmd.index("--timeline-filename=/tmp/t.json") < cmd.index("kobert_pretrain")


def test_host_lists_and_resume_rewrite():
    assert parse_hosts("localhost:1,127.0.0.1:1") == [("localhost", 1), ("127.0.0.1", 1)]
    with pytest.raises(UserError, match="cannot read"):
        parse_hosts("a:0")
    assert _with_resume_auto(["train", "--resume", "none", "--out", "x"]) == ["train", "--out", "x", "--resume",
                                                                              "auto"]
    assert _with_resume_auto(["train", "--resume=PATH"]) == ["train", "--resume", "auto"]


def start_launch(shards, run, hosts, *extra):
    return subprocess.Popen([sys.executable, "-m", "kobert_pretrain", "launch", "-np", "2", "-H", hosts,
                             "--backoff", "0.5", *extra, "--", "train", *TRAIN, "--shards", str(shards),
                             "--out", str(run)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def wait_for_step(run, step, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        m = run / "metrics.jsonl"
        if m.exists() and m.read_text().count("\n") >= step:
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached")


def rank_processes(proc):
    return [c for c in psutil.Process(proc.pid).children(recursive=True) if is_rank_process(c.cmdline())]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, debug_shards):
    run = tmp_path_factory.mktemp("launch") / "full"
    result = horovodrun("localhost:2", 2, "train", *TRAIN, "--shards", debug_shards, "--out", run)
    assert result.returncode == 0, result.stderr[-2000:]
    return run


@pytest.mark.horovod
@pytest.mark.parametrize("hosts", ["localhost:2", "localhost:1,127.0.0.1:1"])
def test_killed_rank_is_restarted_and_the_run_matches(tmp_path, debug_shards, uninterrupted, hosts):
    run = tmp_path / "run"
    proc = start_launch(debug_shards, run, hosts)
    wait_for_step(run, 10)
    victims = rank_processes(proc)
    assert len(victims) == 2
    killed_at = time.time()
    victims[-1].send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert "exited first, killed by SIGKILL); restart 1/3" in out
    assert "resumed from" in out and "launch: job finished" in out
    restart_logged = out.index("restart 1/3")
    assert restart_logged > 0 and time.time() - killed_at < 240
    a, b = read_metrics(uninterrupted), read_metrics(run)
    assert [r["step"] for r in b] == list(range(1, 41))
    np.testing.assert_allclose([r["mlm_loss"] for r in b], [r["mlm_loss"] for r in a], rtol=1e-6)
    pa, pb = final_params(uninterrupted), final_params(run)
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)


@pytest.mark.horovod
def test_sigterm_to_launch_checkpoints_and_does_not_restart(tmp_path, debug_shards):
    run = tmp_path / "run"
    proc = start_launch(debug_shards, run, "localhost:2")
    wait_for_step(run, 6)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out[-3000:]
    assert "pre-empted by SIGTERM" in out and "attempt 2" not in out
    assert list((run / "checkpoints").glob("step-*"))


@pytest.mark.horovod
def test_user_errors_are_not_restarted(tmp_path):
    proc = start_launch(tmp_path / "missing-shards", tmp_path / "run", "localhost:2")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out[-3000:]
    assert "restarting would not help" in out and "attempt 2" not in out


@pytest.mark.horovod
def test_resume_with_another_number_of_ranks(tmp_path, debug_shards):
    from kobert_pretrain.train import Trainer

    from conftest import train_config

    run = tmp_path / "run"
    first = Trainer(train_config(debug_shards, run, *TRAIN[2:], "--train.global_batch_size=32"))
    first.run(until=8)
    first.close()
    result = horovodrun("localhost:2", 2, "train", *TRAIN, "--train.global_batch_size=32", "--shards",
                        debug_shards, "--out", run)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed from" in result.stdout + result.stderr
    steps = [r["step"] for r in read_metrics(run)]
    assert steps == list(range(1, 41))
    assert all(np.isfinite(v).all() for v in final_params(run).values())


@pytest.mark.parametrize("np_,message", [("0", "-np must be at least 1, got 0"),
                                         ("-3", "-np must be at least 1, got -3"),
                                         ("3", "-np 3 does not fit the 2 slot(s) of the hosts")])
def test_np_out_of_range_is_a_one_line_error(tmp_path, np_, message):
    result = run_cli("launch", "-np", np_, "-H", "localhost:2", "--", "train", "--config", "configs/debug.toml",
                     "--out", tmp_path / "r")
    assert_one_line_error(result)
    assert result.stderr.strip() == f"kobert-pretrain: error: {message}"


def test_a_horovodrun_killed_by_a_signal_gives_128_plus_the_signal():
    from kobert_pretrain.launch import _describe, exit_status

    assert exit_status(-signal.SIGKILL) == 137
    assert exit_status(-signal.SIGTERM) == 143
    assert exit_status(1) == 1
    assert _describe(-signal.SIGKILL, None) == "horovodrun was killed by SIGKILL"
    assert _describe(1, None) == "horovodrun exited with status 1"
    assert _describe(1, ("1", 137)) == "rank 1 exited first, killed by SIGKILL"


@pytest.mark.horovod
def test_sigkill_to_horovodrun_without_restarts_left_exits_137(tmp_path, debug_shards):
    run = tmp_path / "run"
    proc = start_launch(debug_shards, run, "localhost:2", "--max-restarts", "0")
    wait_for_step(run, 2)
    horovodruns = [c for c in psutil.Process(proc.pid).children() if "horovodrun" in " ".join(c.cmdline())]
    assert len(horovodruns) == 1
    horovodruns[0].send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGKILL, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("launch: job failed after ") and last.endswith(
        "s (horovodrun was killed by SIGKILL); no restarts left (0 used)"), out[-3000:]


def _launch_logged(shards, run, log, *extra, env=None, steps=200):
    """`launch` with its output in `log`, for tests that watch it while the job runs."""
    args = [a for a in TRAIN if not a.startswith("--train.max_steps")] + [f"--train.max_steps={steps}"]
    return subprocess.Popen([sys.executable, "-m", "kobert_pretrain", "launch", "-np", "2", "-H", "localhost:2",
                             "--backoff", "1", *extra, "--", "train", *args, "--shards", str(shards), "--out", str(run)],
                            cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True, env=env)


def _wait_for(path, text, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if text in path.read_text(errors="replace"):
            return time.time()
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in {path} after {timeout}s:\n{path.read_text()[-3000:]}")


@pytest.mark.horovod
def test_a_stopped_rank_is_restarted_within_a_minute(tmp_path, debug_shards):
    """SIGSTOP on one rank: no process dies and no collective fails for 120 s (Gloo) or 600 s (NCCL);
    the watchdog sees the rank's heartbeat stop, kills the job and restarts it from its checkpoint."""
    run, log = tmp_path / "run", tmp_path / "launch.log"
    proc = _launch_logged(debug_shards, run, log, steps=80)
    try:
        wait_for_step(run, 12)
        victim = rank_processes(proc)[-1]
        rank = victim.environ()["HOROVOD_RANK"]
        victim.send_signal(signal.SIGSTOP)
        stopped = time.time()
        _wait_for(log, "stopped responding", 90)
        restarted = _wait_for(log, "restart 1/3", 60)
        assert restarted - stopped < 60
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        proc.kill()
    out = log.read_text()
    assert f"launch: watchdog: rank {rank} stopped responding: no heartbeat for 3" in out
    assert f"(hung: rank {rank} stopped responding" in out and "launch: job finished" in out
    assert "KOBERT_HEARTBEAT" not in out  # heartbeats are the watchdog's, never shown
    assert [r["step"] for r in read_metrics(run)] == list(range(1, 81))


@pytest.mark.horovod
def test_a_slow_checkpoint_save_is_no_false_alarm(tmp_path, debug_shards):
    """Every save takes 8 s while the watchdog's limits are 5 s of silence and 3 s without a step: the
    ranks keep beating and say they are saving, so the job is left alone."""
    run, log = tmp_path / "run", tmp_path / "launch.log"
    env = dict(os.environ, KOBERT_TEST_SLOW_SAVE_S="8",
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "slow_save"), os.environ.get("PYTHONPATH", "")]))
    proc = _launch_logged(debug_shards, run, log, "--watchdog-silence", "5", "--watchdog-hang", "3", env=env,
                          steps=8)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    out = log.read_text()
    assert "watchdog" not in out and "restart" not in out, out[-3000:]
    assert out.count("parameters identical on 2 ranks") == 2  # the saves at steps 4 and 8

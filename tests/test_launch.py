"""`kobert-pretrain launch`: hostfiles, restart after a rank dies, pre-emption, no restart on user errors."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from kobert_pretrain.errors import UserError
from kobert_pretrain.launch import _with_resume_auto, clean_hostfile, is_rank_process, parse_hostfile, parse_hosts

from conftest import ROOT, final_params, read_metrics
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
                                       ("node1 slots=0\n", 1)])
def test_bad_hostfile_lines_are_named(tmp_path, text, line):
    f = tmp_path / "hosts"
    f.write_text(text)
    with pytest.raises(UserError, match=f"line {line}"):
        parse_hostfile(f)


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

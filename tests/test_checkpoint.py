"""Checkpoints: atomic saves, retention, corrupt-newest fallback, disk full, signals, SIGKILL at random moments."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from kobert_pretrain.checkpoint import CheckpointManager, SaveSchedule
from kobert_pretrain.errors import UserError

from conftest import ROOT, final_params, read_metrics

# ------------------------------------------------------------------------- the manager alone


def _writer(payload: bytes):
    def write(tmp):
        (tmp / "model.params").write_bytes(payload)
        (tmp / "trainer.states").write_bytes(payload[::-1])
    return write


def test_save_is_atomic_and_self_describing(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    path = manager.save(5, _writer(b"abc"), {"step": 5})
    assert path.name == "step-00000005" and sorted(p.name for p in path.iterdir()) == [
        "meta.json", "model.params", "state.json", "trainer.states"]
    assert manager.latest().step == 5 and manager.latest().state() == {"step": 5}
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if ".tmp" in p.name]


def test_retention_keeps_last_and_milestones(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2, keep_every=10)
    for step in (5, 10, 15, 20, 25, 30, 35):
        manager.save(step, _writer(b"x"), {"step": step})
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-00000010", "step-00000020", "step-00000030", "step-00000035"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-meta"])
def test_corrupt_newest_falls_back_to_previous_and_is_kept(tmp_path, damage, capsys):
    manager = CheckpointManager(tmp_path, keep_last=5)
    manager.save(1, _writer(b"one" * 100), {"step": 1})
    newest = manager.save(2, _writer(b"two" * 100), {"step": 2})
    target = newest / "model.params"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-7])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[10] ^= 1
        target.write_bytes(bytes(data))
    else:
        (newest / "meta.json").unlink()
    reason = {"truncate": "model.params has 293 bytes, 300 expected", "flip": "model.params fails its checksum",
              "no-meta": "meta.json is missing"}[damage]
    with pytest.raises(UserError, match=f"not a complete checkpoint \\({reason}\\)"):
        manager.resolve(str(newest))
    chosen = manager.resolve("auto")
    assert chosen.step == 1
    err = capsys.readouterr().err
    assert f"step-00000002 is damaged: {reason}; moved to step-00000002.damaged for inspection; " \
           "using step-00000001" in err
    # Set aside, never deleted, and out of the way of the resumed run saving step 2 again
    kept = newest.with_name("step-00000002.damaged")
    assert not newest.exists() and (kept / "model.params").is_file()
    manager.save(2, _writer(b"again"), {"step": 2})
    manager.save(3, _writer(b"three"), {"step": 3})
    assert kept.is_dir() and manager.latest().step == 3


def test_no_intact_checkpoint_refuses_to_start_over(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=5)
    only = manager.save(1, _writer(b"one" * 100), {"step": 1})
    (only / "model.params").write_bytes(b"x")
    for _ in range(2):  # refusing changes nothing, so asking again refuses again
        with pytest.raises(UserError, match=r"none of the 1 checkpoint\(s\) in .* is intact \(step-00000001 "
                                            r"\(model.params has 1 bytes, 300 expected\)\): starting over "
                                            r"would discard the run"):
            manager.resolve("auto")
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000001"]
    assert (only / "model.params").read_bytes() == b"x"


def test_resuming_an_older_checkpoint_supersedes_the_newer_ones(tmp_path, capsys):
    manager = CheckpointManager(tmp_path, keep_last=5)
    for step in (5, 10, 15, 20):
        manager.save(step, _writer(f"s{step}".encode()), {"step": step})
    (tmp_path / "metrics.jsonl").write_text('{"step": 20}\n')
    chosen = manager.resolve(str(tmp_path / "checkpoints" / "step-00000010"))
    assert chosen.step == 10
    superseded = next((tmp_path / "checkpoints").glob("superseded-*"))
    assert sorted(p.name for p in superseded.iterdir()) == ["metrics.jsonl", "step-00000015", "step-00000020"]
    assert (superseded / "step-00000020" / "model.params").read_bytes() == b"s20"
    assert manager.latest().step == 10  # a crash now resumes the new history, never the abandoned one
    assert "the 2 newer checkpoint(s) of the previous history (step-00000015, step-00000020)" in capsys.readouterr().err
    manager.save(15, _writer(b"new"), {"step": 15})
    manager.save(20, _writer(b"new"), {"step": 20})
    manager.save(25, _writer(b"new"), {"step": 25})
    assert (superseded / "step-00000020" / "model.params").read_bytes() == b"s20"  # retention never reaches it


def test_disk_full_keeps_the_previous_checkpoint(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=1)
    good = manager.save(1, _writer(b"good"), {"step": 1})

    def full(tmp):
        (tmp / "model.params").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match=r"could not write checkpoint .*checkpoints/step-00000002: no space left "
                                        r"on device; the previous checkpoint .*step-00000001 is intact"):
        manager.save(2, full, {"step": 2})
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000001"]
    assert manager.latest().path == good and (good / "model.params").read_bytes() == b"good"


def test_partial_directories_from_a_killed_save_are_removed(tmp_path):
    manager = CheckpointManager(tmp_path)
    (tmp_path / "checkpoints" / "step-00000009.tmp-4242").mkdir(parents=True)
    manager.remove_partial()
    assert not any((tmp_path / "checkpoints").iterdir())



def test_save_schedule_by_steps_by_rank_0s_clock_and_on_a_signal():
    now = [1000.0]
    schedule = SaveSchedule(interval=4, minutes=30, is_root=True, clock=lambda: now[0])
    assert [s for s in range(1, 13) if schedule.save_due(s, False, False)] == [4, 8, 12]
    assert schedule.save_due(5, True, False) and schedule.save_due(5, False, True)
    now[0] += 30 * 60 - 1
    assert not schedule.time_due()
    now[0] += 1
    assert schedule.time_due()
    schedule.saved()
    assert not schedule.time_due()
    # only rank 0's clock counts (the others learn it with the step's counts); 0 turns a setting off
    assert not SaveSchedule(4, 30, is_root=False, clock=lambda: now[0] + 10**6).time_due()
    off = SaveSchedule(0, 0, is_root=True, clock=lambda: now[0])
    assert not any(off.save_due(s, False, False) for s in range(1, 9)) and not off.time_due()


# ------------------------------------------------------------------------- real training processes

ARGS = ["--train.max_steps=40", "--log.interval=1", "--checkpoint.interval=4", "--checkpoint.keep_last=2",
        "--train.micro_batch_size=32", "--log.tensorboard=false"]


def start(shards, run, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kobert_pretrain", "train", "--config", "configs/debug.toml", "--shards", str(shards),
         "--out", str(run), *ARGS, *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, debug_shards):
    run = tmp_path_factory.mktemp("ckpt") / "full"
    code, err = finish(start(debug_shards, run))
    assert code == 0, err
    return run


def assert_same_run(a, b):
    ma, mb = read_metrics(a), read_metrics(b)
    assert [r["step"] for r in mb] == list(range(1, 41))
    assert [(r["mlm_loss"], r["nsp_loss"], r["grad_norm"]) for r in ma] == \
        [(r["mlm_loss"], r["nsp_loss"], r["grad_norm"]) for r in mb]
    pa, pb = final_params(a), final_params(b)
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)


def wait_for_step(run, step, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return
        metrics = run / "metrics.jsonl"
        if metrics.exists() and metrics.read_text().count("\n") >= step:
            return
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_saves_exits_75_and_resume_matches(tmp_path, debug_shards, uninterrupted, sig):
    run = tmp_path / "run"
    proc = start(debug_shards, run)
    wait_for_step(run, 6, proc)
    proc.send_signal(sig)
    code, err = finish(proc)
    assert code == 75, err
    assert f"{sig.name} received" in err and "resume with --resume auto" in err
    saved = CheckpointManager(run).latest()
    assert saved is not None and 6 <= saved.step < 40
    code, err = finish(start(debug_shards, run))
    assert code == 0, err
    assert f"resumed from {saved.path} at step {saved.step}" in err
    assert_same_run(uninterrupted, run)


def test_sigkill_at_random_moments_still_ends_like_uninterrupted(tmp_path, debug_shards, uninterrupted):
    run = tmp_path / "run"
    seed = int(time.time())
    rng = np.random.default_rng(seed)
    kills = 0
    # The first kill lands before the first checkpoint (step 4): that run must start over cleanly.
    for target in [2] + sorted(rng.choice(np.arange(5, 39), size=4, replace=False).tolist()):
        proc = start(debug_shards, run)
        # Past a random step, plus up to 40 ms: sometimes mid-step, sometimes inside a checkpoint write.
        wait_for_step(run, target, proc)
        time.sleep(float(rng.uniform(0, 0.04)))
        if proc.poll() is not None:
            break
        proc.kill()
        proc.wait()
        kills += 1
    code, err = finish(start(debug_shards, run))
    assert code == 0, err
    assert kills >= 3, f"seed {seed}"
    assert_same_run(uninterrupted, run)


def test_corrupt_newest_checkpoint_resumes_from_previous(tmp_path, debug_shards, uninterrupted):
    run = tmp_path / "run"
    proc = start(debug_shards, run, "--checkpoint.keep_last=5")
    wait_for_step(run, 13, proc)
    proc.kill()
    proc.wait()
    checkpoints = sorted((run / "checkpoints").glob("step-*"))
    assert len(checkpoints) >= 2
    newest = checkpoints[-1] / "model.params"
    newest.write_bytes(newest.read_bytes()[:1000])
    code, err = finish(start(debug_shards, run, "--checkpoint.keep_last=5"))
    assert code == 0, err
    assert f"{checkpoints[-1].name} is damaged: model.params has 1000 bytes" in err
    assert f"resumed from {checkpoints[-2]}" in err
    assert_same_run(uninterrupted, run)


def test_export_params_loads_into_a_plain_model(tmp_path, uninterrupted):
    import json

    import mxnet as mx

    from kobert_pretrain.model import ModelShape, build_model

    from conftest import run_cli

    out = tmp_path / "bert.params"
    result = run_cli("export", uninterrupted, "--out", out)
    assert result.returncode == 0, result.stderr
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["step"] == 40
    net = build_model(ModelShape(**meta["model_shape"]))
    net.load_parameters(str(out), ctx=mx.cpu())
    expected = final_params(uninterrupted)
    loaded = net._collect_params_with_prefix()  # structural names, as save_parameters writes them
    assert all(np.array_equal(loaded[k].data().asnumpy(), expected[k]) for k in expected)
    again = run_cli("export", uninterrupted, "--out", out)
    assert again.returncode == 2 and "never overwrites" in again.stderr

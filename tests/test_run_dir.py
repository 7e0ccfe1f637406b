"""What `train --out` may write into, and what survives a failing disk or a second process."""

from __future__ import annotations

import json

import pytest

from kobert_pretrain.checkpoint import CheckpointManager
from kobert_pretrain.errors import ConfigError, UserError
from kobert_pretrain.train import Trainer, train

from conftest import assert_one_line_error, run_cli, train_config


def _snapshot(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_out_holding_something_else_is_refused_untouched(tmp_path, debug_shards):
    release = tmp_path / "hf"
    release.mkdir()
    (release / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 1000}))
    (release / "model.safetensors").write_bytes(b"weights")
    before = _snapshot(release)
    result = run_cli("train", "--config", "configs/debug.toml", "--shards", debug_shards, "--out", release,
                     "--train.max_steps=1")
    assert_one_line_error(result, f"cannot start training: --out {release} already holds files that are not a "
                                  "training run (config.json, model.safetensors); choose a new directory")
    assert _snapshot(release) == before
    afile = tmp_path / "notes.txt"
    afile.write_text("keep")
    with pytest.raises(ConfigError, match="is a file, not a run directory"):
        Trainer(train_config(debug_shards, afile))
    assert afile.read_text() == "keep"


def test_a_run_directory_takes_one_trainer_at_a_time(tmp_path, debug_shards):
    run = tmp_path / "run"
    first = Trainer(train_config(debug_shards, run, "--train.max_steps=2"))
    try:
        with pytest.raises(UserError, match=r"run is being trained by pid \d+ on .*; two runs in one directory"):
            Trainer(train_config(debug_shards, run, "--train.max_steps=2"))
        first.run()
    finally:
        first.close()
    train(train_config(debug_shards, run, "--train.max_steps=3"))  # released: the next one resumes
    assert CheckpointManager(run).latest().step == 3


def test_a_gpu_asked_for_on_a_machine_without_one_is_a_setup_error(tmp_path, debug_shards):
    import mxnet as mx

    if mx.context.num_gpus():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="train.device=gpu but MXNet sees no GPU"):
        Trainer(train_config(debug_shards, tmp_path / "run", "--train.device=gpu"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_non_finite_numbers_are_config_errors(tmp_path, debug_shards, value):
    result = run_cli("train", "--config", "configs/debug.toml", "--shards", debug_shards, "--out", tmp_path / "r",
                     f"--train.lr={value}")
    assert_one_line_error(result, f"invalid config: train.lr: expected a finite number, got '{value}'")
    assert not (tmp_path / "r").exists()


def test_a_failing_checkpoint_write_leaves_nothing_and_says_why(tmp_path):
    import mxnet as mx

    manager = CheckpointManager(tmp_path)

    def mxnet_write_fails(tmp):
        (tmp / "model.params").write_bytes(b"part")
        raise mx.base.MXNetError("[12:00:00] src/io/local_filesys.cc:209: Check failed: nwrite == size (4 vs. 8) "
                                 ": FileStream.Write incomplete")

    with pytest.raises(UserError, match=r"could not write checkpoint .*step-00000001: write failed \(.*FileStream"):
        manager.save(1, mxnet_write_fails, {"step": 1})
    assert list((tmp_path / "checkpoints").iterdir()) == []

    def bug(tmp):
        raise ValueError("a bug keeps its traceback")

    with pytest.raises(ValueError, match="a bug"):
        manager.save(1, bug, {"step": 1})
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_run_config_records_absolute_paths(tmp_path, debug_shards, monkeypatch):
    monkeypatch.chdir(debug_shards.parent)
    train(train_config(debug_shards.name, tmp_path / "run", "--train.max_steps=1"))
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert recorded["shards"] == str(debug_shards) and recorded["out"] == str(tmp_path / "run")


def test_a_signal_during_set_up_still_means_checkpoint_and_exit_75(tmp_path, debug_shards):
    import os
    import signal

    from kobert_pretrain.train import Preempted

    previous = signal.getsignal(signal.SIGTERM)
    trainer = Trainer(train_config(debug_shards, tmp_path / "run", "--train.max_steps=20"))
    os.kill(os.getpid(), signal.SIGTERM)  # before the first step: caught, not fatal
    with pytest.raises(Preempted) as info:
        trainer.run()
    trainer.close()
    assert info.value.signal_name == "SIGTERM" and info.value.step == 1
    assert CheckpointManager(tmp_path / "run").latest().step == 1
    assert signal.getsignal(signal.SIGTERM) is previous  # close() restores the handlers


def test_ctrl_c_once_asks_for_a_checkpoint_twice_stops_now(capsys):
    import os
    import signal

    from kobert_pretrain.run_dir import PreemptionSignals

    previous = signal.getsignal(signal.SIGINT)
    with PreemptionSignals() as signals:
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.received == "SIGINT"
        os.kill(os.getpid(), signal.SIGTERM)  # a later signal of another kind changes nothing
        assert signals.received == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is previous
    err = capsys.readouterr().err
    assert "train: SIGINT received: saving a checkpoint at the next step boundary, then exiting (Ctrl-C again" in err

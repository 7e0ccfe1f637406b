"""Loss scaling and float16 master weights in the real training loop, on CPU.

MXNet's CPU build has no float16 FullyConnected, so a float16 BERT cannot run
here; these tests drive the same code paths that float16 uses: the scaled loss
and its unscaling through clipping, overflow steps that are skipped on every
rank, a run that keeps overflowing stopping as diverged, and the float32 master
weights of a float16 model (saved in checkpoints, restored exactly on resume: test_train_state.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from kobert_pretrain.errors import TrainingDiverged, UserError
from kobert_pretrain.optim import LossScaler
from kobert_pretrain.train import Trainer, train
from kobert_pretrain.train_state import parameters_for_saving

from conftest import final_params, read_metrics, train_config

ARGS = ("--train.max_steps=6", "--log.interval=1", "--checkpoint.interval=0")


def _params(trainer):
    return {k: v.asnumpy() for k, v in parameters_for_saving(trainer.net, trainer.gluon_trainer).items()}


def test_a_scaled_loss_trains_exactly_like_an_unscaled_one(tmp_path, debug_shards):
    train(train_config(debug_shards, tmp_path / "plain", *ARGS))
    scaled = Trainer(train_config(debug_shards, tmp_path / "scaled", *ARGS))
    scaled.scaler = LossScaler(1024.0, window=2)  # doubles every 2 steps: 1024 ... 8192
    scaled.run()
    scaled.close()
    plain, records = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "scaled")
    assert [r["loss_scale"] for r in records] == [1024, 2048, 2048, 4096, 4096, 8192]
    np.testing.assert_allclose([r["grad_norm"] for r in records], [r["grad_norm"] for r in plain], rtol=1e-5)
    np.testing.assert_allclose([r["mlm_loss"] for r in records], [r["mlm_loss"] for r in plain], rtol=1e-5)
    pa, pb = final_params(tmp_path / "plain"), final_params(tmp_path / "scaled")
    for name in pa:
        np.testing.assert_allclose(pb[name], pa[name], rtol=1e-4, atol=1e-6, err_msg=name)


def _poison_first_steps(trainer, steps):
    """Non-finite losses in the first `steps` steps, as a float16 overflow gives: NaN flows through the
    real backward pass into every gradient (which accumulate with grad_req='add')."""
    losses = trainer.losses

    def poisoned(nd):
        mlm_sum, *rest = losses(nd)
        if trainer.step < steps:
            mlm_sum = mlm_sum * float("nan")
        return (mlm_sum, *rest)

    trainer.losses = poisoned


def test_overflowing_steps_are_skipped_and_the_scale_falls(tmp_path, debug_shards):
    trainer = Trainer(train_config(debug_shards, tmp_path / "run", "--train.max_steps=8", "--log.interval=1",
                                   "--checkpoint.interval=0"))
    trainer.scaler = LossScaler(1024.0, window=1000)
    _poison_first_steps(trainer, 3)
    initial = _params(trainer)
    trainer.run(until=3)
    assert trainer.scaler.scale == 128.0 and trainer.scaler.skipped_steps == 3
    after = _params(trainer)
    assert all(np.array_equal(initial[k], after[k]) for k in initial)  # nothing applied
    trainer.run()
    trainer.close()
    records = read_metrics(tmp_path / "run")
    assert [r["loss_scale"] for r in records] == [512, 256, 128, 128, 128, 128, 128, 128]
    assert [r["skipped_steps"] for r in records] == [1, 2, 3, 3, 3, 3, 3, 3]
    assert all(r["grad_norm"] is None and r["mlm_loss"] is None for r in records[:3])  # JSON null, not NaN
    # the NaN gradients of skipped steps were cleared, not carried into later steps
    assert all(math.isfinite(r["grad_norm"]) and math.isfinite(r["mlm_loss"]) for r in records[3:])
    final = _params(trainer)
    assert all(np.isfinite(v).all() for v in final.values())
    assert any(not np.array_equal(initial[k], final[k]) for k in initial)


def test_a_run_that_keeps_overflowing_stops_as_diverged(tmp_path, debug_shards):
    trainer = Trainer(train_config(debug_shards, tmp_path / "run", "--train.max_steps=40", "--log.interval=1",
                                   "--checkpoint.interval=0", "--train.max_skipped_steps=5"))
    _poison_first_steps(trainer, 40)
    with pytest.raises(TrainingDiverged) as info:
        trainer.run()
    trainer.close()
    assert isinstance(info.value, UserError)  # one line from the CLI, exit 2: launch does not restart it
    assert "5 steps in a row with non-finite gradients up to step 5" in str(info.value)
    assert trainer.step == 4 and trainer.scaler.scale == 1.0  # float32: raised inside step 5, scale fixed

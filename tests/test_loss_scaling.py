"""Loss scaling and float16 master weights in the real training loop, on CPU.

MXNet's CPU build has no float16 FullyConnected, so a float16 BERT cannot run
here; these tests drive the same code paths that float16 uses: the scaled loss
and its unscaling through clipping, overflow steps that are skipped on every
rank, a run that keeps overflowing stopping as diverged, and the float32 master
weights of a float16 model (saved in checkpoints, restored exactly on resume).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from kobert_pretrain.errors import TrainingDiverged, UserError
from kobert_pretrain.optim import LossScaler
from kobert_pretrain.train import (Trainer, load_optimizer_states, parameters_for_saving,
                                   save_optimizer_states, train)

from conftest import final_params, read_metrics, train_config

ARGS = ("--train.max_steps=6", "--log.interval=1", "--checkpoint.interval=0")


def _params(trainer):
    return {k: v.asnumpy() for k, v in parameters_for_saving(trainer.net, trainer.trainer).items()}


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
    losses = trainer._losses

    def poisoned(nd):
        mlm_sum, *rest = losses(nd)
        if trainer.step < steps:
            mlm_sum = mlm_sum * float("nan")
        return (mlm_sum, *rest)

    trainer._losses = poisoned


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


def test_the_dynamic_scale_stops_growing_at_2_to_the_24():
    scaler = LossScaler(2.0 ** 23, window=1)
    for _ in range(3):
        scaler.update(True)
    assert scaler.scale == 2.0 ** 24


def test_float32_scaler_never_changes_the_scale():
    scaler = LossScaler(1.0, window=2, dynamic=False)
    assert [scaler.update(ok) for ok in (True, True, True, False, True)] == [True, True, True, False, True]
    assert scaler.scale == 1.0 and scaler.skipped_steps == 1 and scaler.consecutive_skipped == 0


# ---------------------------------------------------------------- float16 master weights


def _fp16_model(seed):
    import mxnet as mx

    class Scale(mx.gluon.HybridBlock):  # elementwise only: float16 runs on MXNet's CPU build
        def __init__(self):
            super().__init__()
            with self.name_scope():
                self.w = self.params.get("w", shape=(64,), init=mx.init.Constant(1.0))
                self.b = self.params.get("b", shape=(64,), init=mx.init.Zero())

        def hybrid_forward(self, F, x, w, b):
            return F.tanh(x * w + b)

    mx.random.seed(seed)
    net = Scale()
    net.initialize(ctx=mx.cpu())
    net.cast("float16")
    trainer = mx.gluon.Trainer(net.collect_params(), "lamb",
                               {"learning_rate": 1e-5, "multi_precision": True, "wd": 0.01},
                               kvstore=None, update_on_kvstore=False)
    return net, trainer


def _fp16_steps(net, trainer, steps, start):
    import mxnet as mx

    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((8, 64)).astype(np.float16) for _ in range(start + steps)]
    for x in xs[start:]:
        with mx.autograd.record():
            loss = (net(mx.nd.array(x, dtype="float16")).astype("float32") ** 2).sum()
        loss.backward()
        trainer.step(1)


def test_float16_checkpoints_hold_the_float32_master_weights(tmp_path):
    import mxnet as mx

    net, trainer = _fp16_model(0)
    _fp16_steps(net, trainer, 5, 0)
    saved = parameters_for_saving(net, trainer)
    master = {k: v.asnumpy() for k, v in saved.items()}
    half = {k: v.data().asnumpy() for k, v in net._collect_params_with_prefix().items()}
    for name in master:
        assert master[name].dtype == np.float32 and half[name].dtype == np.float16
        np.testing.assert_array_equal(master[name].astype(np.float16), half[name])
    # LAMB steps of lr 1e-5 (relative) from 1.0 are below float16's resolution there (2^-10): only the master moved
    assert np.array_equal(half["w"], np.ones(64, np.float16)) and not np.allclose(master["w"], 1.0, atol=1e-7, rtol=0)


def test_float16_resume_restores_master_weights_and_moments_exactly(tmp_path):
    import mxnet as mx

    full, full_trainer = _fp16_model(0)
    _fp16_steps(full, full_trainer, 6, 0)

    first, first_trainer = _fp16_model(0)
    _fp16_steps(first, first_trainer, 3, 0)
    mx.nd.save(str(tmp_path / "model.params"), parameters_for_saving(first, first_trainer))
    save_optimizer_states(first_trainer, tmp_path)

    resumed, resumed_trainer = _fp16_model(1)  # other initial values: everything must come from the files
    resumed.load_parameters(str(tmp_path / "model.params"), ctx=mx.cpu(), cast_dtype=True, dtype_source="current")
    load_optimizer_states(resumed_trainer, tmp_path, mx.cpu())
    _fp16_steps(resumed, resumed_trainer, 3, 3)

    a = parameters_for_saving(full, full_trainer)
    b = parameters_for_saving(resumed, resumed_trainer)
    for name in a:
        assert np.array_equal(a[name].asnumpy(), b[name].asnumpy()), name

"""LR schedule, loss scaler and clipping arithmetic (no model needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kobert_pretrain.optim import LossScaler, learning_rate, update_scaling


def test_learning_rate_warmup_then_linear_decay():
    lrs = [learning_rate(s, 1e-4, 10, 110) for s in range(110)]
    assert lrs[0] == pytest.approx(1e-5) and lrs[9] == pytest.approx(1e-4)
    assert lrs[10] == pytest.approx(1e-4) and lrs[60] == pytest.approx(5e-5) and lrs[109] == pytest.approx(1e-6)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def test_learning_rate_poly_and_end():
    assert learning_rate(60, 1.0, 10, 110, "poly", 2.0) == pytest.approx(0.25)
    assert learning_rate(110, 1.0, 10, 110, "linear", end=0.1) == pytest.approx(0.1)
    assert learning_rate(0, 1.0, 0, 100) == pytest.approx(1.0)


def test_loss_scaler_halves_on_overflow_and_grows_after_window():
    scaler = LossScaler(scale=1024, window=3)
    assert scaler.update(True) and scaler.update(True)
    assert scaler.scale == 1024
    assert not scaler.update(False)
    assert scaler.scale == 512 and scaler.skipped_steps == 1
    for _ in range(3):
        assert scaler.update(True)
    assert scaler.scale == 1024
    state = scaler.state_dict()
    other = LossScaler()
    other.load_state_dict(state)
    assert other.state_dict() == state
    tiny = LossScaler(scale=1.0)
    tiny.update(False)
    assert tiny.scale == 1.0  # never below min_scale


def _applied(grads_per_rank, averaged, loss_scale, clip):
    """Simulate Horovod + MXNet: what update() applies, given each rank's (loss-scaled) gradient."""
    world = len(grads_per_rank)
    summed = np.sum(grads_per_rank, axis=0)
    held = summed / world if averaged else summed
    trainer_scale = 1.0 if averaged else 1.0 / world  # DistributedTrainer._scale
    scaling = update_scaling(float(np.linalg.norm(held)), world, averaged, loss_scale, clip)
    return held * trainer_scale / scaling.batch_size, scaling


@pytest.mark.parametrize("averaged", [False, True])
@pytest.mark.parametrize("world", [1, 2, 4])
def test_clipping_is_the_same_whether_horovod_sums_or_averages(averaged, world):
    rng = np.random.default_rng(world)
    true_grads = [rng.normal(size=50) for _ in range(world)]  # each rank's share of the global gradient
    global_grad = np.sum(true_grads, axis=0)
    for loss_scale in (1.0, 1024.0):
        for clip in (0.0, 0.5, 1e6):
            applied, scaling = _applied([g * loss_scale for g in true_grads], averaged, loss_scale, clip)
            norm = np.linalg.norm(global_grad)
            assert scaling.true_norm == pytest.approx(norm)
            expected = global_grad * (min(1.0, clip / norm) if clip else 1.0)
            np.testing.assert_allclose(applied, expected, rtol=1e-12)
            if clip == 0.5:
                assert np.linalg.norm(applied) == pytest.approx(0.5)


def test_overflow_is_not_clipped_into_a_finite_update():
    scaling = update_scaling(math.inf, 2, False, 1024.0, 1.0)
    assert scaling.clip_coef == 1.0 and not math.isfinite(scaling.true_norm)


def test_the_dynamic_scale_stops_growing_at_2_to_the_24():
    scaler = LossScaler(2.0 ** 23, window=1)
    for _ in range(3):
        scaler.update(True)
    assert scaler.scale == 2.0 ** 24


def test_float32_scaler_never_changes_the_scale():
    scaler = LossScaler(1.0, window=2, dynamic=False)
    assert [scaler.update(ok) for ok in (True, True, True, False, True)] == [True, True, True, False, True]
    assert scaler.scale == 1.0 and scaler.skipped_steps == 1 and scaler.consecutive_skipped == 0

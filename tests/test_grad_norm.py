"""The clipping norm against float64 numpy on the same gradients: BERT-base-sized tensors and a real step."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import train_config
from kobert_pretrain.grad_norm import NORM_SLICE, global_norm, norm_inputs


def _float64_norm(arrays):
    return float(np.sqrt(sum(np.sum(a.asnumpy().astype(np.float64) ** 2) for a in arrays)))


@pytest.mark.parametrize("shape", [(8002, 768), (30522, 1024)])
def test_large_tensors_are_exact_to_float32_rounding(shape):
    import mxnet as mx

    rng = np.random.default_rng(0)
    grads = [mx.nd.array(rng.standard_normal(shape, dtype=np.float32) * 1e-2), mx.nd.array(rng.random(768) + 1)]
    exact = _float64_norm(grads)
    ours = global_norm(grads, norm_inputs(grads, "cpu"))
    whole = global_norm(grads, grads)  # one sum per tensor: MXNet's CPU kernel adds it up in float32
    assert abs(ours - exact) / exact < 3e-7
    assert abs(whole - exact) / exact > 1e-4  # what the trainer computed before: 0.08% / 7% low


def test_slices_share_the_gradient_buffers():
    import mxnet as mx

    g = mx.nd.zeros((3, NORM_SLICE))
    parts = norm_inputs([g], "cpu")
    assert len(parts) == 3
    g[:] = 2.0  # written in place, as backward writes a gradient buffer
    assert global_norm([g], parts) == pytest.approx(2.0 * np.sqrt(3 * NORM_SLICE), rel=1e-12)


def test_float16_on_cpu_casts_each_gradient():
    import mxnet as mx

    grads = [mx.nd.full((10,), 300.0, dtype="float16")]  # 300^2 overflows float16
    assert norm_inputs(grads, "cpu") is None
    assert global_norm(grads, None) == pytest.approx(300.0 * np.sqrt(10), rel=1e-6)
    assert norm_inputs(grads, "gpu") == grads  # the GPU kernel casts to float32 before squaring


def test_a_training_step_logs_the_exact_norm(tmp_path, debug_shards):
    from kobert_pretrain.train import Trainer

    trainer = Trainer(train_config(debug_shards, tmp_path / "run", "--train.clip_grad_norm=0"))
    try:
        phase = trainer.phases[0]
        batch = next(trainer._loader(phase))
        masked = float(batch["masked_weights"].sum())
        trainer._forward_backward(batch, masked, len(batch["valid_length"]), 1.0)
        exact = _float64_norm(trainer._grads)
        assert abs(trainer._grad_norm() - exact) / exact < 1e-6
    finally:
        trainer.close()

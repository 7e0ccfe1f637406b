"""train_state.py: the float32 master weights of a float16 model, saved and restored exactly, on CPU.

MXNet's CPU build has no float16 FullyConnected; an elementwise float16 model with LAMB or BERTAdam
and multi_precision exercises the same optimizer state layouts a float16 BERT has: LAMB (MXNet)
keeps (weight32, moments), BERTAdam (GluonNLP) ((mean, var), weight32). A model on `cpu(k)` carries
device id k as `gpu(k)` does, which is what MXNet keys the optimizer's update counts by.
"""

from __future__ import annotations

import numpy as np
import pytest

from kobert_pretrain.train_state import (load_optimizer_states, optimizer_state_arrays, parameters_for_saving,
                                         save_optimizer_states)


def _fp16_model(seed, optimizer="lamb", device=0):
    import gluonnlp  # noqa: F401  (registers bertadam)
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
    net.initialize(ctx=mx.cpu(device))
    net.cast("float16")
    trainer = mx.gluon.Trainer(net.collect_params(), optimizer,
                               {"learning_rate": 1e-5, "multi_precision": True, "wd": 0.01},
                               kvstore=None, update_on_kvstore=False)
    return net, trainer


def _fp16_steps(net, trainer, steps, start, device=0):
    import mxnet as mx

    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((8, 64)).astype(np.float16) for _ in range(start + steps)]
    for x in xs[start:]:
        with mx.autograd.record():
            loss = (net(mx.nd.array(x, dtype="float16", ctx=mx.cpu(device))).astype("float32") ** 2).sum()
        loss.backward()
        trainer.step(1)


@pytest.mark.parametrize("optimizer", ["lamb", "bertadam"])
def test_float16_checkpoints_hold_the_float32_master_weights(tmp_path, optimizer):
    net, trainer = _fp16_model(0, optimizer)
    _fp16_steps(net, trainer, 5, 0)
    saved = parameters_for_saving(net, trainer)
    master = {k: v.asnumpy() for k, v in saved.items()}
    half = {k: v.data().asnumpy() for k, v in net._collect_params_with_prefix().items()}
    for name in master:
        assert master[name].dtype == np.float32 and half[name].dtype == np.float16
        np.testing.assert_array_equal(master[name].astype(np.float16), half[name])
    # steps of lr 1e-5 from 1.0 are below float16's resolution there (2^-10): only the master moved
    assert np.array_equal(half["w"], np.ones(64, np.float16)) and not np.allclose(master["w"], 1.0, atol=1e-7, rtol=0)


@pytest.mark.parametrize("optimizer", ["lamb", "bertadam"])
@pytest.mark.parametrize("device", [0, 1])
def test_float16_resume_restores_master_weights_and_moments_exactly(tmp_path, optimizer, device):
    """Saved by rank 0 (device 0), resumed on device `device`: rank k of a node trains on gpu(k), and its
    bias correction must continue from the saved update counts, not restart at t=1."""
    import mxnet as mx

    full, full_trainer = _fp16_model(0, optimizer, device)
    _fp16_steps(full, full_trainer, 6, 0, device)

    first, first_trainer = _fp16_model(0, optimizer)
    _fp16_steps(first, first_trainer, 3, 0)
    mx.nd.save(str(tmp_path / "model.params"), parameters_for_saving(first, first_trainer))
    save_optimizer_states(first_trainer, tmp_path)

    resumed, resumed_trainer = _fp16_model(1, optimizer, device)  # other initial values: all from the files
    resumed.load_parameters(str(tmp_path / "model.params"), ctx=mx.cpu(device), cast_dtype=True,
                            dtype_source="current")
    load_optimizer_states(resumed_trainer, tmp_path, mx.cpu(device))
    _fp16_steps(resumed, resumed_trainer, 3, 3, device)

    a = parameters_for_saving(full, full_trainer)
    b = parameters_for_saving(resumed, resumed_trainer)
    for name in a:
        assert np.array_equal(a[name].asnumpy(), b[name].asnumpy()), name


def test_checkpoint_arrays_are_cpu_copies_whatever_the_device():
    """mx.nd.load puts every array back on the device it was saved from: arrays saved from gpu(0) would
    put all ranks of a node on GPU 0 at resume. What is saved must be on the CPU, here from cpu(1)."""
    net, trainer = _fp16_model(0, "bertadam", device=1)
    _fp16_steps(net, trainer, 2, 0, device=1)
    parameters = parameters_for_saving(net, trainer)
    arrays, structure = optimizer_state_arrays(trainer)
    assert len(parameters) == 2 and len(arrays) == 6 and structure["0"] == [["array", "array"], "array"]
    assert {str(a.context) for a in [*parameters.values(), *arrays.values()]} == {"cpu(0)"}

"""Data parallelism under real horovodrun (Gloo, 2 ranks): equals one process with the global batch."""

from __future__ import annotations

import os

import numpy as np
import pytest

from kobert_pretrain.train import train

from conftest import final_params, read_metrics, train_config
from test_horovod_shards import horovodrun

pytestmark = pytest.mark.horovod

# Dropout off (masks would differ between layouts); a clip threshold far below the gradient norm
# (~2) so that clipping is active in every step; accumulation on the 2-rank side too.
COMMON = ["--model.dropout=0", "--train.clip_grad_norm=0.05", "--train.max_steps=5", "--log.interval=1",
          "--checkpoint.interval=0", "--train.bucket_window=1"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, debug_shards):
    run = tmp_path_factory.mktemp("hvd") / "single"
    train(train_config(debug_shards, run, *COMMON, "--train.micro_batch_size=16", "--train.global_batch_size=32"))
    return run


@pytest.mark.parametrize("averaged", ["0", "1"], ids=["horovod-sums", "horovod-averages"])
def test_two_ranks_equal_one_process_with_the_global_batch(tmp_path, debug_shards, one_process, averaged):
    run = tmp_path / "two"
    env_before = os.environ.get("KOBERT_HOROVOD_AVERAGE")
    os.environ["KOBERT_HOROVOD_AVERAGE"] = averaged
    try:
        result = horovodrun("localhost:2", 2, "train", "--config", "configs/debug.toml", "--shards", debug_shards,
                            "--out", run, *COMMON, "--train.micro_batch_size=8", "--train.global_batch_size=32")
    finally:
        if env_before is None:
            os.environ.pop("KOBERT_HOROVOD_AVERAGE")
        else:
            os.environ["KOBERT_HOROVOD_AVERAGE"] = env_before
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    single, double = read_metrics(one_process), read_metrics(run)
    assert [r["step"] for r in double] == [1, 2, 3, 4, 5]
    for a, b in zip(single, double):
        assert a["grad_norm"] > 0.05  # clipping was active
        np.testing.assert_allclose([b["mlm_loss"], b["nsp_loss"], b["grad_norm"]],
                                   [a["mlm_loss"], a["nsp_loss"], a["grad_norm"]], rtol=2e-5)
    pa, pb = final_params(one_process), final_params(run)
    assert pa.keys() == pb.keys()
    for name in pa:
        np.testing.assert_allclose(pb[name], pa[name], rtol=1e-4, atol=2e-6, err_msg=name)
    moved = max(float(np.abs(pa[k]).max()) for k in pa)
    assert moved > 0

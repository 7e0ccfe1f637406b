"""Batch plans for N ranks and the per-GPU memory estimate."""

from __future__ import annotations

import pytest

from kobert_pretrain.config import PRESETS
from kobert_pretrain.model import ModelShape
from kobert_pretrain.plan import BatchPlan, batch_plan, memory_estimate


@pytest.mark.parametrize("ranks,micro,accumulation", [(1, 64, 64), (8, 64, 8), (64, 64, 1)])
def test_a_fixed_global_batch_on_any_number_of_gpus(ranks, micro, accumulation):
    assert batch_plan(1, 128, 64, 4096, ranks) == BatchPlan(1, 128, micro, accumulation, ranks, 4096)


def test_the_micro_batch_shrinks_when_ranks_share_a_small_global_batch():
    # configs/base.toml: KoBERT's global batch 256 with at most 64 per V100: 8 ranks run 32 each.
    plan = batch_plan(1, 128, 64, 256, 8)
    assert (plan.micro_batch_size, plan.accumulation) == (32, 1)
    assert plan.describe(64) == "micro batch 32 (of at most 64) x accumulation 1 x 8 rank(s) = global batch 256"
    assert batch_plan(2, 512, 8, 256, 64).micro_batch_size == 4  # phase 2 on 64 GPUs


def test_plans_that_cannot_be():
    assert batch_plan(1, 128, 16, 20, 1) == "phase 1: global batch 20 is not divisible by micro batch 16 x 1 rank(s)"
    assert batch_plan(1, 128, 16, 32, 3) == "phase 1: global batch 32 is not divisible by 3 rank(s)"


def test_default_global_batch_is_one_micro_batch_per_rank():
    plan = batch_plan(1, 64, 16, 0, 2)
    assert (plan.global_batch_size, plan.tokens_per_step, plan.steps_per_epoch(1429)) == (32, 2048, 44)


def test_memory_estimate_for_bert_base():
    shape = ModelShape(*PRESETS["base"], vocab_size=8002, dropout=0.1, use_nsp=True)
    plan = batch_plan(1, 128, 64, 4096, 8)
    fp16 = memory_estimate(shape, plan, 20, "float16")
    assert fp16.model_states_gib == pytest.approx(16 * shape.parameter_count() / 2**30)
    # 12 layers x 128 x 64 x 768 x (34 + 5 x 12 x 128 / 768) bytes = 3.09 GiB, plus the MLM head
    assert 3.1 < fp16.activations_gib < 3.4
    fp32 = memory_estimate(shape, plan, 20, "float32")
    assert fp32.activations_gib == pytest.approx(2 * fp16.activations_gib, rel=0.05)
    assert fp16.describe().startswith("~5.") and "an estimate" in fp16.describe()

"""metrics.py: loss sums add and reduce by name, means divide by the right counts, bits per character, NaN is
written as null, evaluations are left out of the training speed."""

from __future__ import annotations

import json
import math

from kobert_pretrain.distributed import Dist
import numpy as np

from kobert_pretrain.metrics import LossSums, MetricsLogger, masked_characters
from kobert_pretrain.run_dir import RunDir


def test_loss_sums_add_fieldwise_and_give_means():
    a = LossSums(mlm_loss_sum=6.0, mlm_correct=1.0, masked_tokens=3.0, nsp_loss_sum=2.0, nsp_correct=1.0,
                 sequences=2)
    b = LossSums(2.0, 3.0, 1.0, 1.0, 0.0, 2)
    total = a + b
    assert total == LossSums(8.0, 4.0, 4.0, 3.0, 1.0, 4)
    assert total.allreduce(Dist(), name="test") == total  # one process: the sums themselves, as float64
    assert total.means(use_nsp=True) == {"mlm_loss": 2.0, "mlm_acc": 1.0, "nsp_loss": 0.75, "nsp_acc": 0.25}
    assert total.means(use_nsp=False) == {"mlm_loss": 2.0, "mlm_acc": 1.0, "nsp_loss": 0.0, "nsp_acc": 0.0}
    assert LossSums(0.0, 0.0, 0.0, 0.0, 0.0, 0).means(True)["mlm_loss"] == 0.0  # no masked tokens: no 0/0


def test_records_are_plain_json_with_null_for_non_finite(tmp_path):
    logger = MetricsLogger(RunDir(tmp_path), Dist(), tensorboard=False)
    logger.add(LossSums(float("nan"), 0.0, 2.0, 1.0, 1.0, 2), tokens=10.0)
    record = logger.log_train(1, 10, use_nsp=True, lr=1e-4, grad_norm=float("inf"))
    assert math.isnan(record["mlm_loss"]) and record["nsp_loss"] == 0.5
    written = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert written["mlm_loss"] is None and written["grad_norm"] is None and written["nsp_acc"] == 0.5
    assert list(written)[:6] == ["kind", "step", "mlm_loss", "mlm_acc", "nsp_loss", "nsp_acc"]
    assert logger.sums is None and logger.first_step == 1  # the window restarts after a log line


def test_bits_per_char_of_hand_built_sums():
    # 3 masked tokens, 6.0 nats in all, standing for 4 characters: 6 / 4 / ln 2 bits per character.
    sums = LossSums(6.0, 1.0, 3.0, 0.0, 0.0, 2, 4.0)
    assert sums.bits_per_char() == 6.0 / 4.0 / math.log(2)
    assert (sums + LossSums(2.0, 0.0, 1.0, 0.0, 0.0, 1, 4.0)).bits_per_char() == 8.0 / 8.0 / math.log(2)
    assert LossSums(6.0, 1.0, 3.0, 0.0, 0.0, 2).bits_per_char() is None  # no characters counted: no number


def test_masked_characters_count_only_weighted_labels():
    lengths = np.array([1, 0, 0, 0, 0, 3, 1, 2], dtype=np.int32)  # [UNK]=1, specials 0, then pieces of 3, 1, 2
    ids = np.array([[5, 6, 7, 0], [7, 5, 5, 5]])
    weights = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=np.float32)  # padding slots have weight 0
    assert masked_characters(lengths, ids, weights) == 3 + 1 + 2 + 1 + 2 + 3


def test_eval_records_carry_bits_per_char_and_what_was_seen(tmp_path):
    logger = MetricsLogger(RunDir(tmp_path), Dist(), tensorboard=False)
    record = logger.log_eval(7, LossSums(6.0, 1.0, 3.0, 1.0, 1.0, 2, 4.0), True, tokens_seen=900, sequences_seen=14)
    written = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert written == record == {"kind": "eval", "step": 7, "tokens_seen": 900, "sequences_seen": 14,
                                 "eval_mlm_loss": 2.0, "eval_mlm_acc": 1 / 3,
                                 "eval_mlm_bits_per_char": 6.0 / 4.0 / math.log(2), "eval_masked_tokens": 3.0, "eval_masked_chars": 4.0, "eval_nsp_loss": 0.5,
                                 "eval_nsp_acc": 0.5}


def test_an_evaluation_inside_a_log_window_is_not_training_time(tmp_path):
    logger = MetricsLogger(RunDir(tmp_path), Dist(), tensorboard=False)
    logger.started -= 10.0  # the window began 10 s ago ...
    logger.exclude(8.0)  # ... and 8 of them were an evaluation
    logger.add(LossSums(1.0, 0.0, 1.0, 0.0, 0.0, 4), tokens=400.0)
    record = logger.log_train(2, 10, use_nsp=False, lr=1e-4, grad_norm=1.0)
    assert 190 < record["tokens_per_s"] <= 200 and 0.99 < record["step_s"] < 1.05

"""metrics.py: loss sums add and reduce by name, means divide by the right counts, NaN is written as null."""

from __future__ import annotations

import json
import math

from kobert_pretrain.distributed import Dist
from kobert_pretrain.metrics import LossSums, MetricsLogger
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

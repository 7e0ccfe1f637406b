"""Stage 5 metrics against scikit-learn and scipy on fixed predictions; mean +- sd; the markdown table."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score

from kobert_pretrain.finetune.metrics import format_mean_sd, mean_sd, primary_metric, summarize, task_metrics
from kobert_pretrain.finetune.report import results_table, summary_line


def test_classification_metrics_match_sklearn():
    golds = np.array([0, 0, 1, 1, 2, 2, 2, 0, 1, 2])
    preds = np.array([0, 1, 1, 1, 2, 0, 2, 0, 0, 2])
    metrics = task_metrics(preds, golds, is_regression=False, num_labels=3)
    assert metrics == {"accuracy": accuracy_score(golds, preds), "macro_f1": f1_score(golds, preds, average="macro")}
    assert metrics["accuracy"] == 0.7
    # Hand-computed: per-class F1 4/7, 2/3, 6/7 -> macro 0.6984...
    assert metrics["macro_f1"] == pytest.approx((4 / 7 + 2 / 3 + 6 / 7) / 3, abs=1e-12)


def test_macro_f1_counts_a_class_never_predicted_as_zero():
    golds, preds = [0, 1, 2, 2], [0, 1, 1, 1]  # class 2 never predicted, class 3 absent from both
    metrics = task_metrics(preds, golds, is_regression=False, num_labels=4)
    assert metrics["macro_f1"] == pytest.approx(f1_score(golds, preds, labels=[0, 1, 2, 3], average="macro",
                                                         zero_division=0))
    assert metrics["macro_f1"] == pytest.approx((1 + 0.5 + 0 + 0) / 4)


def test_regression_metrics_match_scipy():
    golds = np.array([5.0, 4.75, 0.5, 2.0, 3.2, 1.0])
    preds = np.array([4.1, 4.4, 1.2, 1.9, 2.5, 1.6])
    metrics = task_metrics(preds, golds, is_regression=True)
    assert metrics == {"pearson": pearsonr(preds, golds)[0], "spearman": spearmanr(preds, golds)[0]}
    assert metrics["spearman"] == pytest.approx(1 - 6 * 2 / (6 * 35))  # one swapped pair of neighbours
    assert task_metrics(np.full(6, 2.5), golds, is_regression=True) == {"pearson": 0.0, "spearman": 0.0}


def test_primary_metrics():
    assert primary_metric(False) == "accuracy" and primary_metric(True) == "spearman"


def test_mean_sd_is_the_sample_sd():
    stat = mean_sd([0.80, 0.82, 0.87])
    assert stat["mean"] == pytest.approx(0.83) and stat["n"] == 3
    assert stat["sd"] == pytest.approx(np.sqrt(((0.03) ** 2 + (0.01) ** 2 + (0.04) ** 2) / 2))
    assert mean_sd([0.5]) == {"mean": 0.5, "sd": None, "n": 1}
    assert format_mean_sd(stat) == "0.8300 ± 0.0361" and format_mean_sd(mean_sd([0.5])) == "0.5000"
    assert summarize([{"accuracy": 0.5, "macro_f1": 0.4}, {"accuracy": 0.7, "macro_f1": 0.6}])["macro_f1"]["mean"] \
        == pytest.approx(0.5)


def test_results_table_exact():
    def entry(dev, test, epochs):
        return {"dev": summarize(dev), "test": summarize(test), "chosen_epochs": epochs}

    results = {
        "task": "sentence-classification", "metrics": ["accuracy", "macro_f1"],
        "files": {"train": {"path": "/d/train.tsv", "examples": 2000}, "dev": {}, "test": {}},
        "config": {"seeds": [1, 2]}, "release": {"step": 3000},
        "models": {
            "pretrained": entry([{"accuracy": 0.7, "macro_f1": 0.6}, {"accuracy": 0.8, "macro_f1": 0.7}],
                                [{"accuracy": 0.75, "macro_f1": 0.65}, {"accuracy": 0.75, "macro_f1": 0.65}], [3, 2]),
            "from_scratch": entry([{"accuracy": 0.6, "macro_f1": 0.5}, {"accuracy": 0.6, "macro_f1": 0.5}],
                                  [{"accuracy": 0.55, "macro_f1": 0.5}, {"accuracy": 0.65, "macro_f1": 0.5}], [1, 1]),
        },
    }
    assert results_table(results) == (
        "sentence-classification on `/d/train.tsv` (2,000 training examples), seeds 1,2: mean ± sd at the epoch "
        "chosen on dev\n\n"
        "| model | dev accuracy | dev macro_f1 | test accuracy | test macro_f1 | chosen epochs |\n"
        "|---|---:|---:|---:|---:|---|\n"
        "| pretrained, step 3,000 | 0.7500 ± 0.0707 | 0.6500 ± 0.0707 | 0.7500 ± 0.0000 | 0.6500 ± 0.0000 | 3, 2 |\n"
        "| from scratch (same architecture, random init) | 0.6000 ± 0.0000 | 0.5000 ± 0.0000 | 0.6000 ± 0.0707 "
        "| 0.5000 ± 0.0000 | 1, 1 |\n")
    assert summary_line(results) == [
        "pretrained, step 3,000: dev accuracy 0.7500 ± 0.0707, test accuracy 0.7500 ± 0.0000",
        "from scratch (same architecture, random init): dev accuracy 0.6000 ± 0.0000, test accuracy 0.6000 ± 0.0707"]

"""Task metrics (scikit-learn, scipy) and their mean +- standard deviation over seeds.

Classification: accuracy and macro-F1 (each class counts alike, as KLUE reports); the best epoch is chosen by
accuracy. Regression: Pearson and Spearman correlation (KorSTS reports Spearman, which chooses the epoch).
"""

from __future__ import annotations

import math

import numpy as np

CLASSIFICATION_METRICS = ("accuracy", "macro_f1")
REGRESSION_METRICS = ("pearson", "spearman")


def metric_names(is_regression: bool) -> tuple[str, ...]:
    return REGRESSION_METRICS if is_regression else CLASSIFICATION_METRICS


def primary_metric(is_regression: bool) -> str:
    """The metric that chooses the epoch (higher is better)."""
    return "spearman" if is_regression else "accuracy"


def task_metrics(predictions, golds, is_regression: bool, num_labels: int = 0) -> dict[str, float]:
    """Metrics of one evaluation: predicted class ids (or scores) against the gold ones."""
    predictions, golds = np.asarray(predictions), np.asarray(golds)
    if is_regression:
        from scipy.stats import pearsonr, spearmanr

        # A constant prediction (an untrained or collapsed model) has no correlation: 0, not NaN.
        if np.ptp(predictions) == 0 or np.ptp(golds) == 0:
            return {"pearson": 0.0, "spearman": 0.0}
        return {"pearson": float(pearsonr(predictions, golds)[0]), "spearman": float(spearmanr(predictions, golds)[0])}
    from sklearn.metrics import accuracy_score, f1_score

    labels = list(range(num_labels)) if num_labels else None
    return {"accuracy": float(accuracy_score(golds, predictions)),
            "macro_f1": float(f1_score(golds, predictions, labels=labels, average="macro", zero_division=0))}


def mean_sd(values: list[float]) -> dict[str, float | None]:
    """Mean and sample standard deviation (n - 1; None for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    sd = float(array.std(ddof=1)) if len(array) > 1 else None
    return {"mean": float(array.mean()), "sd": sd, "n": len(array)}


def summarize(records: list[dict[str, float]]) -> dict[str, dict]:
    """Mean +- sd of every metric over a list of per-seed metric dicts."""
    return {name: mean_sd([r[name] for r in records]) for name in records[0]} if records else {}


def format_mean_sd(stat: dict) -> str:
    """`0.8123 ± 0.0040` (or `0.8123` for one seed)."""
    if stat["sd"] is None or math.isnan(stat["sd"]):
        return f"{stat['mean']:.4f}"
    return f"{stat['mean']:.4f} ± {stat['sd']:.4f}"

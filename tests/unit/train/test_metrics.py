"""rank_sweep.metrics: values against hand-computed examples, degenerate inputs, baselines."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from rank_sweep.config import TaskConfig
from rank_sweep.errors import ConfigError
from rank_sweep.train.metrics import baseline_score, compute_metrics

MRPC = TaskConfig(name="mrpc", metric="f1", metrics=["f1", "accuracy", "mcc"])
STSB = TaskConfig(name="stsb", labels=None, metric="pearson", metrics=["pearson", "spearman"])


def test_binary_metrics_match_hand_computation():
    # TP=2, FP=1, FN=1, TN=1
    m = compute_metrics(MRPC, [1, 0, 1, 1, 0], [1, 0, 0, 1, 1])
    assert set(m) == {"f1", "accuracy", "mcc"}
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert m["mcc"] == pytest.approx((2 * 1 - 1 * 1) / math.sqrt(3 * 3 * 2 * 2))


def test_all_positive_predictions_give_mcc_zero_and_the_all_positive_f1():
    labels = np.array([1] * 279 + [0] * 129)  # MRPC dev class balance
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from a constant prediction
        m = compute_metrics(MRPC, np.ones(408, dtype=int), labels)
    assert m["mcc"] == 0.0
    assert m["f1"] == pytest.approx(2 * 279 / (2 * 279 + 129))
    assert m["accuracy"] == pytest.approx(279 / 408)


def test_f1_positive_class_is_index_one():
    # Predicting all-negative: F1 of class 1 is 0 even though accuracy is high.
    m = compute_metrics(MRPC, [0, 0, 0, 0], [0, 0, 0, 1])
    assert m["f1"] == 0.0 and m["accuracy"] == 0.75


def test_logits_are_argmaxed():
    logits = np.array([[2.0, -1.0], [0.1, 0.3], [-3.0, 3.0]])
    assert compute_metrics(MRPC, logits, [0, 1, 0])["accuracy"] == pytest.approx(2 / 3)


def test_multiclass_accuracy_and_macro_f1():
    task = TaskConfig(name="mnli", labels=["e", "n", "c"], metric="accuracy", metrics=["accuracy", "f1"])
    m = compute_metrics(task, [0, 1, 2, 2], [0, 1, 1, 2])
    assert m["accuracy"] == 0.75
    # per class F1: 1, 2/3, 2/3
    assert m["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_regression_correlations():
    labels = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    assert compute_metrics(STSB, 2 * labels + 1, labels)["pearson"] == pytest.approx(1.0)
    m = compute_metrics(STSB, np.exp(labels), labels)  # monotone but not linear
    assert m["spearman"] == pytest.approx(1.0) and 0.8 < m["pearson"] < 0.99
    anti = compute_metrics(STSB, -labels, labels)
    assert anti["pearson"] == pytest.approx(-1.0) and anti["spearman"] == pytest.approx(-1.0)
    assert compute_metrics(STSB, labels.reshape(-1, 1), labels)["pearson"] == pytest.approx(1.0)


def test_constant_regression_predictions_score_zero_not_nan():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = compute_metrics(STSB, np.full(5, 2.5), [0.0, 1.0, 2.0, 3.0, 4.0])
    assert m == {"pearson": 0.0, "spearman": 0.0}
    assert compute_metrics(STSB, [1.0, 2.0], [3.0, 3.0]) == {"pearson": 0.0, "spearman": 0.0}


def test_classification_metric_on_regression_task_is_rejected():
    task = TaskConfig(name="r", labels=None, metric="pearson", metrics=["pearson"])
    task.metrics.append("accuracy")  # past config validation, compute_metrics still refuses
    with pytest.raises(ConfigError, match="accuracy"):
        compute_metrics(task, [1.0, 2.0], [1.0, 2.0])


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        compute_metrics(MRPC, [0, 1, 1], [0, 1])


def test_baseline_uses_the_training_majority_class():
    acc = TaskConfig(name="t", metric="accuracy", metrics=["accuracy"])
    # training majority is 0; validation majority is 1: the baseline must not peek at validation
    assert baseline_score(acc, [0, 0, 0, 1], [1, 1, 0]) == pytest.approx(1 / 3)
    assert baseline_score(MRPC, [1, 1, 0], [1, 1, 0, 0]) == pytest.approx(2 * 2 / (2 * 2 + 2))
    cola = TaskConfig(name="cola", metric="mcc", metrics=["mcc", "accuracy"])
    assert baseline_score(cola, [1, 1, 0], [1, 0, 0, 1]) == 0.0


def test_baseline_for_regression_is_zero_correlation():
    assert baseline_score(STSB, [1.0, 2.0, 4.5], [0.0, 3.0, 5.0]) == 0.0

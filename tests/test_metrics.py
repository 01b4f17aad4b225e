"""The metric registry: values, NaN-aware comparison, and log lines its regexes read."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from tabtransformer import metrics


def test_values_on_a_known_binary_case():
    y = np.array([0, 1, 1, 0])
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    scores = metrics.compute_all("binary", y, p)
    assert scores["accuracy"] == 0.75
    assert scores["auc"] == 1.0
    assert scores["f1"] == pytest.approx(2 / 3)
    assert scores["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4, 0.7])))


def test_values_on_a_known_regression_case():
    scores = metrics.compute_all("regression", np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert scores["mae"] == pytest.approx(2 / 3)
    assert scores["rmse"] == pytest.approx(math.sqrt(4 / 3))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
def test_undefined_metric_is_nan_not_an_error():
    p = np.array([[0.4, 0.6], [0.3, 0.7]])
    assert math.isnan(metrics.compute_all("binary", np.array([1, 1]), p)["auc"])


def test_jumpstart_objective_comes_first():
    first = {
        task: metrics.for_task(task)[0].name for task in ("binary", "multiclass", "regression")
    }
    assert first == {"binary": "f1", "multiclass": "accuracy", "regression": "r2"}


@pytest.mark.parametrize(
    "value, best, higher, expected",
    [
        (0.5, None, True, True),
        (float("nan"), None, True, True),  # the first epoch is the best so far
        (float("nan"), 0.5, True, False),  # NaN never beats a number
        (0.1, float("nan"), False, True),  # a number always beats NaN
        (0.6, 0.5, True, True),
        (0.6, 0.5, False, False),
        (0.5, 0.5, True, False),  # ties keep the earlier epoch
    ],
)
def test_is_better_is_nan_aware(value, best, higher, expected):
    assert metrics.is_better(value, best, higher) is expected


@pytest.mark.parametrize("value", [0.123456789, 1e-7, -3.5, float("nan"), float("inf")])
def test_regexes_read_back_the_logged_values(value):
    for metric in metrics.REGISTRY:
        epoch = re.search(metric.epoch_regex, f"epoch 1/4 {metric.epoch_field(value)} rows/s=9")
        final = re.search(metric.final_regex, metric.final_line(value))
        for match in (epoch, final):
            assert match is not None
            read = float(match.group(1))
            assert (math.isnan(read) and math.isnan(value)) or read == pytest.approx(value, 1e-5)


def test_metric_definitions_cover_final_and_epoch_series():
    names = {d["Name"] for d in metrics.metric_definitions("regression")}
    assert names == {"r2", "rmse", "mae", "validation:r2", "validation:rmse", "validation:mae"}

"""The binary decision threshold (`decision_threshold`): chosen on the rows the metrics are
computed on, stored in the artifact, followed by f1, predict() and the endpoint's
predicted_label; through the real `train` entry point and server."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import FAST, Job, Server
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import f1_score

from tabtransformer import load_model, metrics

ROWS = 600
# Enough epochs at a high enough rate that the positives' probabilities spread out.
LEARNS = {"cv_folds": "3", "report": "false", "n_epochs": "8", "learning_rate": "0.003"}


def rare_positives(n: int = ROWS, seed: int = 0) -> pd.DataFrame:
    """A table whose positive class is about 6% of the rows, learnable from its columns."""
    rng = np.random.default_rng(seed)
    color = rng.choice(["red", "green", "blue"], n)
    size = rng.normal(10, 3, n).round(2)
    signal = (color == "red") * 1.5 + (size - 10) / 3 + rng.normal(0, 0.7, n)
    label = np.where(signal > np.quantile(signal, 0.94), "yes", "no")
    return pd.DataFrame({"label": label, "color": color, "size": size})


def trained(job: Job, **hp: str) -> tuple[dict, str]:
    job.channel("training", rare_positives())
    job.hyperparameters({**FAST, **LEARNS, **hp})
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads((job.model / "metrics.json").read_text()), result.stdout + result.stderr


@pytest.fixture(scope="module")
def chosen(tmp_path_factory) -> tuple[Job, dict, str]:
    job = Job(tmp_path_factory.mktemp("threshold") / "opt_ml")
    return job, *trained(job)


@pytest.mark.slow
def test_the_threshold_is_chosen_out_of_fold_and_makes_f1_informative(chosen):
    job, summary, log = chosen
    threshold = summary["decision_threshold"]
    assert 0 < threshold < 0.5  # few positives: their probabilities stay low
    assert summary["validation_rows"].startswith("out-of-fold")
    final_f1 = float(log.split("metrics={'f1': ")[1].split("}")[0])
    assert final_f1 == pytest.approx(summary["validation"]["f1"], rel=1e-5) and final_f1 > 0
    assert "validation_decision_threshold=" in log  # each epoch's, beside its f1
    assert f"decision threshold {threshold:.4g}" in log
    stored = json.loads((job.model / "preprocessing.json").read_text())["target"]
    assert stored["threshold"] == threshold


@pytest.mark.slow
def test_predict_and_the_endpoint_label_rows_at_the_stored_threshold(chosen):
    job, summary, _ = chosen
    threshold = summary["decision_threshold"]
    features = rare_positives(seed=1).drop(columns="label")
    predictor = load_model(job.model)
    positive = predictor.predict_proba(features)[:, 1]
    expected = np.where(positive >= threshold, "yes", "no")
    assert ((positive >= threshold) & (positive < 0.5)).any()  # where argmax would say "no"
    assert list(predictor.predict(features)) == list(expected)
    with Server(job.base) as server:
        body = features.to_csv(header=False, index=False)
        reply = server.post(body, accept="application/json;verbose")
        assert reply.status_code == 200, reply.text
    assert reply.json()["predicted_label"] == list(expected)


@pytest.mark.slow
def test_half_is_the_argmax(tmp_path):
    job = Job(tmp_path / "opt_ml")
    summary, log = trained(job, decision_threshold="0.5", n_epochs="2")
    assert summary["decision_threshold"] == 0.5 and "validation_decision_threshold=0.5 " in log
    predictor = load_model(job.model)
    features = rare_positives(seed=1).drop(columns="label")
    probabilities = predictor.predict_proba(features)
    assert list(predictor.predict(features)) == [
        predictor.classes[i] for i in probabilities.argmax(axis=1)
    ]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.floats(0, 1, allow_nan=False)), min_size=2, max_size=60
    ).filter(lambda rows: len({y for y, _ in rows}) == 2)
)
def test_the_chosen_threshold_gives_the_best_f1_on_its_rows(rows):
    y = np.array([int(label) for label, _ in rows])
    p = np.array([score for _, score in rows])
    threshold = metrics.f1_best_threshold(y, p)
    best = max(f1_score(y, p >= t, zero_division=0) for t in np.unique(p))
    assert f1_score(y, p >= threshold, zero_division=0) == pytest.approx(best)


def test_one_class_rows_keep_the_half_threshold():
    assert metrics.f1_best_threshold(np.zeros(5, int), np.linspace(0, 1, 5)) == 0.5
    assert metrics.f1_best_threshold(np.ones(5, int), np.linspace(0, 1, 5)) == 0.5

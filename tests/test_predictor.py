"""The Python API of a loaded model follows scikit-learn's names: `predict` gives labels
(classification) or values (regression), `predict_proba` probabilities; `outputs` is what
the endpoint answers."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tabtransformer import load_model
from tabtransformer.errors import UserError
from tabtransformer.inference import Predictor
from tabtransformer.model import TabTransformer
from tabtransformer.preprocessing import TargetEncoder

DATA = Path(__file__).parent / "data"
OLD = json.loads((DATA / "old_artifact_predictions.json").read_text())


def rows() -> pd.DataFrame:
    return pd.DataFrame(OLD["rows"], columns=["color", "size", "shape", "weight"])


def test_a_classifier_predicts_labels_and_predict_proba_gives_probabilities():
    predictor = load_model(DATA / "old_artifact")
    assert predictor.target.threshold is None  # written before thresholds: the argmax
    probabilities = predictor.predict_proba(rows())
    assert np.allclose(probabilities, OLD["probabilities"], atol=1e-6)
    assert np.array_equal(predictor.outputs(rows()), probabilities)
    labels = predictor.predict(rows())
    expected = [predictor.classes[i] for i in probabilities.argmax(axis=1)]
    assert labels.shape == (len(rows()),) and list(labels) == expected
    assert list(labels) == predictor.predict_labels(probabilities)


def test_a_regressor_predicts_values_and_has_no_probabilities():
    classifier = load_model(DATA / "old_artifact")
    config = replace(classifier.model.config, n_outputs=1)
    target = TargetEncoder("regression", None, mean=50.0, std=10.0)
    regressor = Predictor(TabTransformer(config), classifier.preprocessor, target, True)
    values = regressor.predict(rows())
    assert values.shape == (len(rows()),) and np.array_equal(values, regressor.outputs(rows()))
    with pytest.raises(UserError, match=r"regression model.*predict"):
        regressor.predict_proba(rows())

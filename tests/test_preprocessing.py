"""Preprocessing in process: category tokens, special codes, the quantile map, the task."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tabtransformer.errors import UserError
from tabtransformer.preprocessing import (
    MISSING_CODE,
    UNSEEN_CODE,
    CategoricalColumn,
    NumericColumn,
    TablePreprocessor,
    TargetEncoder,
    bin_codes,
)


def test_tokens_1_and_1_0_and_text_1_are_the_same_category():
    column = CategoricalColumn("x", ["1", "2"])
    as_int = column.encode(pd.Series([1, 2]))
    as_float = column.encode(pd.Series([1.0, 2.0]))
    as_text = column.encode(pd.Series(["1", " 2 "]))
    as_mixed = column.encode(pd.Series([1, "2"], dtype=object))
    assert as_int.tolist() == as_float.tolist() == as_text.tolist() == as_mixed.tolist()
    assert as_int.tolist() == [2, 3]


def test_missing_and_unseen_values_get_their_own_codes():
    pre = TablePreprocessor.fit(pd.DataFrame({"color": ["red", "red", "blue"]}), None)
    codes, _ = pre.transform(pd.DataFrame({"color": ["red", None, "green", "blue"]}))
    assert codes[:, 0].tolist() == [2, MISSING_CODE, UNSEEN_CODE, 3]  # most frequent first
    assert pre.cardinalities == [4]


def test_text_columns_are_categorical_unless_categorical_is_given():
    frame = pd.DataFrame({"a": ["x", "y", "x"], "b": ["1", "2.5", None], "c": [1, 2, 3]})
    pre = TablePreprocessor.fit(frame, None)
    assert [c.name for c in pre.categorical] == ["a"]
    assert [c.name for c in pre.numeric] == ["b", "c"]
    declared = TablePreprocessor.fit(frame, ["a", "c"])
    assert [c.name for c in declared.categorical] == ["a", "c"]


def test_quantile_map_is_monotone_normal_and_imputes_the_median_as_zero():
    rng = np.random.default_rng(0)
    values = rng.exponential(5, 2000)  # skewed
    pre = TablePreprocessor.fit(pd.DataFrame({"x": values}), None)
    probe = pd.DataFrame({"x": [np.min(values), np.median(values), np.max(values), None]})
    _, numbers = pre.transform(probe)
    low, mid, high, missing = numbers[:, 0]
    assert low < mid < high
    assert abs(mid) < 0.05 and missing == 0.0
    _, train_numbers = pre.transform(pd.DataFrame({"x": values}))
    assert abs(train_numbers.mean()) < 0.05 and abs(train_numbers.std() - 1) < 0.1


def test_tied_values_map_to_their_middle_rank():
    column = NumericColumn("x", [0.0, 0.0, 0.0, 1.0, 2.0], 0.0)
    z = column.normal(pd.Series([0.0]))
    assert -1.0 < z[0] < 0.0  # the middle of the first three ranks, below the median


def test_a_text_value_in_a_numeric_column_names_row_and_column():
    pre = TablePreprocessor.fit(pd.DataFrame({"x": [1.0, 2.0]}), None)
    frame = pd.DataFrame({"x": ["3", "big"]}, index=pd.RangeIndex(1, 3, name="row"))
    with pytest.raises(UserError, match=r"row 2, column 'x': 'big' is not a number"):
        pre.transform(frame)


def test_bins_are_equal_mass_and_missing_is_the_missing_code():
    z = np.array([-3.0, -0.1, 0.1, 3.0, np.nan])
    assert bin_codes(z, 2).tolist() == [2, 2, 3, 3, MISSING_CODE]


def test_preprocessor_round_trips_through_its_dict():
    frame = pd.DataFrame({"a": ["x", "y"], "b": [1.0, 2.0]})
    pre = TablePreprocessor.fit(frame, None, continuous_bins=4)
    again = TablePreprocessor.from_dict(pre.to_dict())
    for left, right in zip(pre.transform(frame), again.transform(frame), strict=True):
        assert np.array_equal(left, right)


def test_schema_check_names_missing_columns_and_order():
    pre = TablePreprocessor.fit(pd.DataFrame({"a": ["x"], "b": [1.0]}), None)
    with pytest.raises(UserError, match=r"missing \['b'\]; unexpected \['c'\]"):
        pre.check_schema(pd.DataFrame({"a": ["x"], "c": [1.0]}), None)
    with pytest.raises(UserError, match="the same columns in another order"):
        pre.check_schema(pd.DataFrame({"b": [1.0], "a": ["x"]}), None)
    with pytest.raises(UserError, match=r"categorical_index\.json"):
        pre.check_schema(pd.DataFrame({"a": ["x"], "b": [1.0]}), ["a", "b"])
    pre.check_schema(pd.DataFrame({"a": ["y"], "b": [2.0]}), ["a"])


@pytest.mark.parametrize(
    "labels, task, classes",
    [
        (["yes", "no", "yes"], "binary", ["no", "yes"]),
        ([0, 1, 2, 1], "multiclass", [0, 1, 2]),
        (["0", "1", "2"], "multiclass", [0, 1, 2]),
        ([0.5, 1.25, 3.0], "regression", None),
        (list(range(25)), "regression", None),  # more integer values than max_classes
    ],
)
def test_task_detection(labels, task, classes):
    target = TargetEncoder.fit(pd.Series(labels), "auto", max_classes=20)
    assert target.task == task and target.classes == classes


def test_regression_target_is_standardised_and_decoded_back():
    y = pd.Series([10.0, 20.0, 30.0])
    target = TargetEncoder.fit(y, "regression", 20)
    encoded = target.encode(y)
    assert abs(encoded.mean()) < 1e-6
    assert np.allclose(target.decode_regression(encoded.astype(np.float64)), y)


@pytest.mark.parametrize(
    "labels, task, message",
    [
        (["a", "a"], "auto", "single value"),
        (["a", "b", "c"], "binary", "task=binary needs exactly 2 classes"),
    ],
)
def test_impossible_classification_targets(labels, task, message):
    with pytest.raises(UserError, match=message):
        TargetEncoder.fit(pd.Series(labels), task, 20)


def test_unknown_label_names_its_row():
    target = TargetEncoder.fit(pd.Series(["a", "b"]), "auto", 20)
    with pytest.raises(UserError, match=r"row 2: label 'c' is not among"):
        target.encode(pd.Series(["a", "c"], index=pd.RangeIndex(1, 3)))

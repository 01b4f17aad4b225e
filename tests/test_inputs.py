"""Bad training inputs are user errors that name what is wrong: checked in-process.

Each case calls the function that reads or parses the input (hyperparameters.parse,
read_labelled, read_artifact, TablePreprocessor.fit, TargetEncoder.fit) and expects a
UserError whose message names the file, line, column or key. The `train` subprocess cases
at the end check that such errors reach the failure file as a ClientError.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FAST, Job, make_table

from tabtransformer import hyperparameters
from tabtransformer.artifacts import read_artifact
from tabtransformer.channels import read_file, read_labelled
from tabtransformer.errors import USER_ERROR_EXIT_CODE, UserError
from tabtransformer.preprocessing import TablePreprocessor, TargetEncoder, to_numbers

# --- hyperparameters.json -------------------------------------------------------------


@pytest.mark.parametrize("content", [[], ["n_epochs", 3], "n_epochs=3", None, 7])
def test_hyperparameters_file_must_be_an_object(content):
    with pytest.raises(UserError, match=r"hyperparameters\.json must be a JSON object"):
        hyperparameters.parse(content)


@pytest.mark.parametrize(
    "raw",
    [
        {"n_epochs": 10**400},
        {"n_epochs": str(10**400)},
        {"learning_rate": 10**400},
        {"batch_size": "1e400"},
    ],
)
def test_huge_numbers_are_out_of_range_not_a_crash(raw):
    key = next(iter(raw))
    with pytest.raises(UserError, match=f"'{key}'.*it must be") as error:
        hyperparameters.parse(raw)
    assert len(str(error.value)) < 400  # the value is shortened in the message


@pytest.mark.parametrize("value", [{"a": 1}, [1, 2], None, '{"a": 1}', "[1]"])
def test_string_hyperparameter_must_be_a_string(value):
    with pytest.raises(UserError, match="'target_column'.*a string"):
        hyperparameters.parse({"target_column": value})


@pytest.mark.parametrize("name", ["null", "true", "1e3", "007", '"churn"', "churn"])
def test_string_hyperparameter_keeps_the_text_sagemaker_passes(name):
    expected = json.loads(name) if name.startswith('"') else name
    assert hyperparameters.parse({"target_column": name})["target_column"] == expected


def test_numeric_hyperparameter_is_not_a_boolean():
    with pytest.raises(UserError, match="'n_epochs'"):
        hyperparameters.parse({"n_epochs": True})

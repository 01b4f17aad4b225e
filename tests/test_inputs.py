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


# --- the model channel's model.tar.gz ---------------------------------------------------


def _model_tarball(folder: Path) -> bytes:
    """A real (untrained, tiny) artifact packed as SageMaker packs model.tar.gz."""
    from tabtransformer.artifacts import Artifact, save_artifact
    from tabtransformer.model import TabTransformer, TabTransformerConfig

    table = make_table("binary", n=40)
    pre = TablePreprocessor.fit(table.drop(columns="label"), None)
    target = TargetEncoder.fit(table["label"], "auto", 20)
    config = TabTransformerConfig(
        cardinalities=pre.cardinalities,
        n_continuous=len(pre.numeric),
        n_outputs=target.n_outputs,
        dim=8,
        n_blocks=1,
        n_heads=2,
    )
    model_dir = folder / "model"
    artifact = Artifact(TabTransformer(config), pre, target, False, {})
    save_artifact(model_dir, artifact, hyperparameters.defaults())
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(model_dir.iterdir()):
            tar.add(path, arcname=path.name)
    return buffer.getvalue()


def test_intact_model_tarball_is_read(tmp_path: Path):
    (tmp_path / "model.tar.gz").write_bytes(_model_tarball(tmp_path))
    assert read_artifact(tmp_path / "model.tar.gz").target.task == "binary"


@pytest.mark.parametrize("keep", [0.0, 0.001, 0.3, 0.6, 0.9])
def test_truncated_model_tarball_is_a_user_error(tmp_path: Path, keep: float):
    whole = _model_tarball(tmp_path)
    (tmp_path / "model.tar.gz").write_bytes(whole[: int(len(whole) * keep)])
    with pytest.raises(UserError, match=r"model\.tar\.gz") as error:
        read_artifact(tmp_path / "model.tar.gz")
    assert "/tmp" not in str(error.value).replace(str(tmp_path), "")  # no scratch folder

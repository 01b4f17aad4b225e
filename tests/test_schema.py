"""The hyperparameter schema is the single source of the defaults file and the docs table."""

from __future__ import annotations

import json

import pytest
from conftest import REPO

from tabtransformer import hyperparameters
from tabtransformer.errors import UserError


def test_repository_defaults_file_matches_the_schema():
    on_disk = json.loads((REPO / "hyperparameters.json").read_text())
    assert hyperparameters.parse(on_disk) == hyperparameters.defaults()
    assert set(on_disk) == set(hyperparameters.BY_NAME)


def test_docs_table_is_generated_from_the_schema():
    assert hyperparameters.markdown_table() in (REPO / "docs" / "hyperparameters.md").read_text()


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"n_epochs": '"7"'}, 7),
        ({"n_epochs": "7"}, 7),
        ({"n_epochs": 7.0}, 7),
    ],
)
def test_values_arrive_as_strings_or_json(raw, expected):
    assert hyperparameters.parse(raw)["n_epochs"] == expected


@pytest.mark.parametrize(
    "raw",
    [
        {"n_epochs": "7.5"},
        {"pretrain_only": "maybe"},
        {"continuous_bins": "1"},
        {"learning_rate": "nan"},
    ],
)
def test_invalid_values_name_the_key(raw):
    with pytest.raises(UserError, match=next(iter(raw))):
        hyperparameters.parse(raw)

"""Request bodies to frames and predictions to bodies, in process (no gunicorn)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sagemaker_inference.errors import GenericInferenceToolkitError

from tabtransformer.errors import UserError
from tabtransformer.inference import Predictor
from tabtransformer.model import TabTransformer, TabTransformerConfig
from tabtransformer.preprocessing import TablePreprocessor, TargetEncoder
from tabtransformer.serving import codecs
from tabtransformer.serving.accept import negotiate


def predictor(task: str = "binary") -> Predictor:
    """A small real (untrained) model over the columns color (text) and size (number)."""
    features = pd.DataFrame({"color": ["red", "blue", "red"], "size": [1.0, 2.0, 3.0]})
    pre = TablePreprocessor.fit(features, None)
    labels = pd.Series(["no", "yes", "no"] if task == "binary" else [1.5, 2.5, 3.5])
    target = TargetEncoder.fit(labels, task, 20)
    config = TabTransformerConfig(pre.cardinalities, 1, target.n_outputs, dim=8, n_blocks=1)
    return Predictor(TabTransformer(config), pre, target, header=True)


@pytest.fixture(scope="module")
def binary() -> Predictor:
    return predictor("binary")


def test_csv_rows_become_a_frame_indexed_by_row(binary):
    frame = codecs.decode(b"red,1.5\nblue,\n", "text/csv", binary).frame
    assert list(frame.columns) == ["color", "size"]
    assert frame.index.tolist() == [1, 2]
    assert frame.loc[2, "size"] is None or pd.isna(frame.loc[2, "size"])


def test_json_by_position_by_name_and_jsonlines_agree(binary):
    by_position = codecs.decode(b'{"instances": [["red", 1.5]]}', "application/json", binary).frame
    by_name = codecs.decode(b'[{"size": 1.5, "color": "red"}]', "application/json", binary).frame
    lines = codecs.decode(b'{"features": ["red", 1.5]}\n', "application/jsonlines", binary).frame
    expected = binary.outputs(pd.DataFrame({"color": ["red"], "size": [1.5]}))
    for frame in (by_position, by_name, lines):
        assert np.allclose(binary.outputs(frame), expected)


@pytest.mark.parametrize(
    "body, content_type, message",
    [
        (b"", "text/csv", "body is empty"),
        (b"red,1,extra\n", "text/csv", "row 1"),
        (b"red,big\n", "text/csv", "row 1, column 'size': 'big' is not a number"),
        (b'{"rows": []}', "application/json", '"instances"'),
        (b"[1, 2", "application/json", "not valid JSON"),
        (b'[{"colour": "red"}]', "application/json", "unknown column 'colour'"),
        (b'[["red"]]', "application/json", "row 1: expected 2 values but found 1"),
        (b'{"a": 1}\nnot json\n', "application/jsonlines", "Line 2 is not valid JSON"),
    ],
)
def test_bad_bodies_are_user_errors_naming_the_place(binary, body, content_type, message):
    with pytest.raises(UserError, match=message):
        records = codecs.decode(body, content_type, binary)
        binary.outputs(records.frame)  # a bad number surfaces when the frame is encoded


def test_unsupported_content_type_is_415(binary):
    with pytest.raises(GenericInferenceToolkitError) as error:
        codecs.decode(b"x", "application/x-npy", binary)
    assert error.value.status_code == 415


@pytest.mark.parametrize(
    "accept, expected",
    [
        (None, ("application/json", False)),
        ("*/*", ("application/json", False)),
        ("text/csv", ("text/csv", False)),
        ("application/json; verbose", ("application/json", True)),
        ("image/png, application/x-jsonlines", ("application/jsonlines", False)),
    ],
)
def test_negotiate_picks_the_first_supported_type(accept, expected):
    fmt = negotiate(accept, "application/json")
    assert (fmt.content_type, fmt.verbose) == expected


def test_unsupported_accept_is_406():
    with pytest.raises(GenericInferenceToolkitError) as error:
        negotiate("image/png", "application/json")
    assert error.value.status_code == 406


def test_encodings_of_class_probabilities(binary):
    p = np.array([[0.25, 0.75], [0.9, 0.1]])
    csv = codecs.encode(codecs.Answer(p), binary, codecs.ResponseFormat("text/csv"), False)
    assert csv == "0.25,0.75\n0.9,0.1\n"
    verbose = json.loads(
        codecs.encode(
            codecs.Answer(p), binary, codecs.ResponseFormat("application/json", True), False
        )
    )
    assert verbose == {
        "probabilities": p.tolist(),
        "predicted_label": ["yes", "no"],
        "labels": ["no", "yes"],
    }
    lines = codecs.encode(codecs.Answer(p), binary, codecs.ResponseFormat("application/json"), True)
    assert [json.loads(line)["predicted_label"] for line in lines.splitlines()] == ["yes", "no"]
    assert codecs.response_content_type(codecs.ResponseFormat("application/json"), True) == (
        codecs.JSONLINES
    )


def test_encodings_of_regression_predictions():
    regressor = predictor("regression")
    y = np.array([1.5, 2.25])
    body = codecs.encode(
        codecs.Answer(y), regressor, codecs.ResponseFormat("application/json"), False
    )
    assert json.loads(body) == {"prediction": [1.5, 2.25]}
    assert (
        codecs.encode(codecs.Answer(y), regressor, codecs.ResponseFormat("text/csv"), False)
        == "1.5\n2.25\n"
    )


@pytest.mark.parametrize(
    "accept, embeddings, explain",
    [
        ("application/json;embeddings", True, False),
        ("application/json; explain", False, True),
        ("application/jsonlines;embeddings;explain", True, True),
        ("application/json;verbose", False, False),
    ],
)
def test_negotiate_reads_the_embeddings_and_explain_parameters(accept, embeddings, explain):
    fmt = negotiate(accept, "application/json")
    assert (fmt.embeddings, fmt.explain) == (embeddings, explain)


@pytest.mark.parametrize("accept", ["text/csv;explain", "text/csv; embeddings"])
def test_csv_cannot_carry_embeddings_or_attributions(accept):
    with pytest.raises(GenericInferenceToolkitError) as error:
        negotiate(accept, "application/json")
    assert error.value.status_code == 406
    assert "application/json;explain" in error.value.message


def test_embeddings_and_attributions_go_beside_the_predictions(binary):
    frame = pd.DataFrame({"color": ["red", "blue"], "size": [1.0, 2.0]})
    p, embeddings, attributions = binary.outputs(frame), binary.embed(frame), binary.explain(frame)
    fmt = codecs.ResponseFormat("application/json", embeddings=True, explain=True)
    body = json.loads(
        codecs.encode(codecs.Answer(p, None, embeddings, attributions), binary, fmt, False)
    )
    assert body["columns"] == ["color"]
    assert np.array(body["embeddings"]).shape == (2, 1, 8)
    assert np.allclose(body["embeddings"], embeddings.values, atol=1e-6)
    assert [list(a) for a in body["attributions"]] == [["color", "size"]] * 2
    assert np.allclose([list(a.values()) for a in body["attributions"]], attributions.values)
    lines = codecs.encode(
        codecs.Answer(p, None, embeddings, attributions), binary, fmt, True
    ).splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert set(first) == {
        "probabilities",
        "predicted_label",
        "embeddings",
        "columns",
        "attributions",
    }
    assert np.array(first["embeddings"]).shape == (1, 8)


def test_an_embedding_answer_over_the_payload_limit_is_413_saying_how_many_rows_fit(binary):
    fmt = codecs.ResponseFormat("application/json", embeddings=True)
    per_row = 1 * 8 * codecs.BYTES_PER_EMBEDDING_VALUE
    codecs.check_answer_size(fmt, 100, binary, limit=100 * per_row)  # fits exactly
    with pytest.raises(GenericInferenceToolkitError) as error:
        codecs.check_answer_size(fmt, 101, binary, limit=100 * per_row)
    assert error.value.status_code == 413
    assert "at most 100 rows" in error.value.message
    codecs.check_answer_size(codecs.ResponseFormat("application/json"), 10**9, binary, 1)


def test_embeddings_of_a_model_without_token_columns_are_a_user_error():
    features = pd.DataFrame({"size": [1.0, 2.0, 3.0]})
    pre = TablePreprocessor.fit(features, None)
    target = TargetEncoder.fit(pd.Series(["no", "yes", "no"]), "binary", 20)
    model = TabTransformer(TabTransformerConfig([], 1, 2, dim=8, n_blocks=1))
    numbers_only = Predictor(model, pre, target, header=True)
    fmt = codecs.ResponseFormat("application/json", embeddings=True)
    with pytest.raises(UserError, match="no token columns"):
        codecs.check_answer_size(fmt, 1, numbers_only, limit=10**6)

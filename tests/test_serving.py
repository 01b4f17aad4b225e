"""The inference container contract, checked against the real gunicorn server."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import requests
from conftest import FAST, Job, Server, make_table

from tabtransformer import load_model

pytestmark = pytest.mark.slow
TABLE = make_table("binary", n=240)
FEATURES = TABLE.drop(columns="label")


@pytest.fixture(scope="module")
def binary_model(tmp_path_factory) -> Job:
    """A binary model trained with a header (so JSON rows may name their columns)."""
    job = Job(tmp_path_factory.mktemp("binary") / "opt_ml")
    job.channel("training", TABLE, header=True)
    job.hyperparameters({**FAST, "target_column": "label"})
    assert job.train().returncode == 0
    return job


@pytest.fixture(scope="module")
def server(binary_model):
    server = Server(binary_model.base)
    yield server
    server.stop()


def csv_body(frame: pd.DataFrame) -> str:
    return frame.to_csv(header=False, index=False)


def test_ping_is_empty_200(server):
    response = requests.get(server.url + "/ping", timeout=5)
    assert response.status_code == 200 and response.content == b""


def test_csv_predictions_equal_in_process_predictions(server, binary_model):
    rows = FEATURES.head(20)
    response = server.post(csv_body(rows))
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    expected = load_model(binary_model.model).predict(rows)
    assert np.allclose(response.json()["probabilities"], expected, atol=1e-9)


def test_json_instances_by_position_by_name_and_bare_list(server):
    rows = FEATURES.head(3)
    positional = json.loads(rows.to_json(orient="values"))
    by_name = json.loads(rows.to_json(orient="records"))
    expected = server.post(csv_body(rows)).json()["probabilities"]
    for body in ({"instances": positional}, {"instances": by_name}, positional):
        response = server.post(json.dumps(body), "application/json")
        assert response.status_code == 200, response.text
        assert np.allclose(response.json()["probabilities"], expected, atol=1e-9)


def test_jsonlines_in_and_out(server):
    rows = FEATURES.head(4)
    body = "\n".join(json.dumps(r) for r in json.loads(rows.to_json(orient="records")))
    response = server.post(body, "application/jsonlines", accept="application/jsonlines")
    assert response.status_code == 200
    lines = response.text.strip().split("\n")
    assert len(lines) == 4
    assert {"probabilities", "predicted_label"} == set(json.loads(lines[0]))


def test_accept_types(server):
    rows = csv_body(FEATURES.head(5))
    verbose = server.post(rows, accept="application/json;verbose").json()
    assert verbose["labels"] == ["no", "yes"]
    assert verbose["predicted_label"] == [
        verbose["labels"][int(np.argmax(p))] for p in verbose["probabilities"]
    ]
    as_csv = server.post(rows, accept="text/csv")
    assert as_csv.headers["Content-Type"].startswith("text/csv")
    assert np.allclose(
        pd.read_csv(io.StringIO(as_csv.text), header=None).to_numpy(),
        verbose["probabilities"],
        atol=1e-5,
    )
    for accept in ("*/*", None, "image/png, text/csv"):
        response = server.post(rows, accept=accept)
        assert response.status_code == 200, accept


def test_unseen_categories_and_empty_cells_predict(server):
    body = "purple,,triangle,\nred,11.5,,3.2\n"
    response = server.post(body)
    assert response.status_code == 200, response.text
    assert len(response.json()["probabilities"]) == 2


@pytest.mark.parametrize(
    "body, content_type, status, words",
    [
        ("red,1,circle\n", "text/csv", 400, ["row 1", "expected 4 columns but found 3"]),
        ("red,1,circle,2\nred,abc,circle,2\n", "text/csv", 400, ["row 2", "'size'", "'abc'"]),
        ('{"instances": [[1, 2', "application/json", 400, ["not valid JSON"]),
        ('{"instances": [{"colour": "red"}]}', "application/json", 400, ["row 1", "'colour'"]),
        ('{"rows": []}', "application/json", 400, ['"instances"']),
        ("", "text/csv", 400, ["empty"]),
        ("red,1,circle,2", "application/x-npy", 415, ["application/x-npy"]),
        ("red,1,circle,2", "text/plain", 415, ["text/plain"]),
    ],
)
def test_bad_requests_get_4xx_with_reason(server, body, content_type, status, words):
    response = server.post(body, content_type)
    assert response.status_code == status, response.text
    for word in words:
        assert word in response.json()["error"]


def test_unsupported_accept_is_406(server):
    response = server.post("red,1,circle,2\n", accept="image/png")
    assert response.status_code == 406 and "image/png" in response.json()["error"]


def test_payload_over_the_limit_is_413_and_server_lives_on(binary_model):
    server = Server(binary_model.base, SAGEMAKER_MAX_PAYLOAD_IN_MB="1")
    try:
        big = csv_body(FEATURES) * 300  # about 5 MB
        assert server.post(big).status_code == 413
        assert server.post(csv_body(FEATURES.head(2))).status_code == 200
    finally:
        server.stop()


def test_batch_mode_one_line_per_record_in_order(binary_model):
    server = Server(
        binary_model.base, SAGEMAKER_BATCH="true", SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT="text/csv"
    )
    try:
        params = requests.get(server.url + "/execution-parameters", timeout=5).json()
        assert params == {
            "MaxConcurrentTransforms": 2,
            "BatchStrategy": "MULTI_RECORD",
            "MaxPayloadInMB": 6,
        }
        rows = pd.concat([FEATURES] * 10, ignore_index=True)  # 2,400 records
        response = server.post(csv_body(rows))
        lines = response.text.strip("\n").split("\n")
        assert len(lines) == len(rows)
        first = np.array(lines[0].split(","), dtype=float)
        again = np.array(lines[len(FEATURES)].split(","), dtype=float)
        assert np.allclose(first, again)  # row 0 and row 240 are the same record
        as_json = server.post(csv_body(rows.head(7)), accept="application/json")
        assert len(as_json.text.strip().split("\n")) == 7
    finally:
        server.stop()


def test_regression_response_and_headerless_model(tmp_path):
    job = Job(tmp_path / "opt_ml")
    table = make_table("regression")
    job.channel("training", table)
    assert job.train().returncode == 0
    server = Server(job.base)
    try:
        rows = table.drop(columns="label").head(3)
        response = server.post(csv_body(rows))
        expected = load_model(job.model).predict(rows)
        assert np.allclose(response.json()["prediction"], expected)
        as_csv = server.post(csv_body(rows), accept="text/csv").text.split()
        assert np.allclose([float(v) for v in as_csv], expected, rtol=1e-6)
    finally:
        server.stop()


def test_serve_without_a_model_says_so(tmp_path):
    with pytest.raises(RuntimeError, match="not a TabTransformer model"):
        (tmp_path / "model").mkdir()
        Server(tmp_path)


def test_single_worker_with_all_cpu_threads_serves_a_default_size_model(tmp_path):
    """Regression: loading weights in the gunicorn master started torch's thread pool,
    and a forked worker that then used several threads hung before answering /ping."""
    job = Job(tmp_path / "opt_ml")
    job.channel("training", TABLE)
    job.hyperparameters({"n_epochs": "1"})  # default architecture: 6 blocks
    assert job.train().returncode == 0
    server = Server(job.base, SAGEMAKER_MODEL_SERVER_WORKERS="1")
    try:
        assert server.post(csv_body(FEATURES.head(3))).status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize(
    "name, value",
    [
        ("SAGEMAKER_MODEL_SERVER_WORKERS", "two"),
        ("SAGEMAKER_MODEL_SERVER_TIMEOUT", "-5"),
        ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "lots"),
    ],
)
def test_bad_server_settings_are_named(binary_model, name, value):
    with pytest.raises(RuntimeError, match=f"{name}='{value}'"):
        Server(binary_model.base, **{name: value})

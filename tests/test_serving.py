"""The inference container contract, checked against the real gunicorn server."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import torch
from conftest import FAST, SERVE_ENTRY, Job, Server, free_port, make_table
from safetensors.torch import load_file, save_file

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
    expected = load_model(binary_model.model).outputs(rows)
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


def test_accept_types(server, binary_model):
    rows = csv_body(FEATURES.head(5))
    verbose = server.post(rows, accept="application/json;verbose").json()
    assert verbose["labels"] == ["no", "yes"]
    threshold = load_model(binary_model.model).target.threshold  # chosen in training
    assert verbose["predicted_label"] == [
        verbose["labels"][int(p[1] >= threshold)] for p in verbose["probabilities"]
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
        expected = load_model(job.model).outputs(rows)
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


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as strict clients do."""

    def refuse(name: str):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_chunked_body_over_the_limit_is_413_not_fewer_answers(binary_model):
    """Regression: a chunked body (no Content-Length) was cut at the limit and answered 200
    with predictions for the rows that got through."""
    server = Server(binary_model.base, SAGEMAKER_MAX_PAYLOAD_IN_MB="1")
    try:
        row = csv_body(FEATURES.head(1)).encode()
        n_rows = (1024 * 1024 * 3 // 2) // len(row)  # 1.5 MB

        def chunks(n: int):
            for _ in range(n // 100):
                yield row * 100

        over = requests.post(
            server.url + "/invocations",
            data=chunks(n_rows),
            headers={"Content-Type": "text/csv"},
            timeout=60,
        )
        assert over.request.headers.get("Transfer-Encoding") == "chunked"
        assert over.status_code == 413, over.text[:200]
        assert "SAGEMAKER_MAX_PAYLOAD_IN_MB" in over.json()["error"]
        under = requests.post(
            server.url + "/invocations",
            data=chunks(n_rows // 2),
            headers={"Content-Type": "text/csv"},
            timeout=60,
        )
        assert under.status_code == 200
        assert len(under.json()["probabilities"]) == n_rows // 2 // 100 * 100
    finally:
        server.stop()


def start_slow_upload(port: int, sent: bytes = b"red,1") -> socket.socket:
    """A client that sends its headers and the first bytes of a 1,000-byte body, then
    nothing: it holds its connection until closed."""
    client = socket.create_connection(("127.0.0.1", port), timeout=30)
    client.sendall(
        b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/csv\r\n"
        b"Content-Length: 1000\r\n\r\n" + sent
    )
    return client


def test_slow_uploads_do_not_hold_up_a_good_request(server):
    """Regression: with as many slow uploads as workers, every sync worker sat in a read
    until the 60 s timeout and good requests waited. The slow clients here hold their
    connections for the whole test (>10 s apart from the 1 s asked of the good one)."""
    body = csv_body(FEATURES.head(1))
    assert server.post(body).status_code == 200  # warm
    slow = [start_slow_upload(server.port) for _ in range(2 * 10)]  # workers = 2, and more
    try:
        time.sleep(0.5)  # every slow upload has been accepted and is waiting for its body
        start = time.monotonic()
        response = requests.post(
            server.url + "/invocations",
            data=body,
            headers={"Content-Type": "text/csv"},
            timeout=10,
        )
        elapsed = time.monotonic() - start
        assert response.status_code == 200
        assert elapsed < 1.0, f"a good request waited {elapsed:.1f} s behind slow uploads"
    finally:
        for client in slow:
            client.close()


def test_stalled_upload_is_answered_408_after_the_request_timeout(binary_model):
    server = Server(binary_model.base, SAGEMAKER_MODEL_SERVER_TIMEOUT="5")
    try:
        client = start_slow_upload(server.port)
        start = time.monotonic()
        status_line = client.makefile("rb").readline()
        elapsed = time.monotonic() - start
        client.close()
        assert b" 408 " in status_line, status_line
        assert 4 < elapsed < 25
        assert server.post(csv_body(FEATURES.head(1))).status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize(
    "body, content_type, column",
    [
        ("red,inf,circle,2\n", "text/csv", "size"),
        ("red,1,circle,-inf\n", "text/csv", "weight"),
        ("red,1e400,circle,2\n", "text/csv", "size"),
        ('[["red", 1, "circle", 2], ["red", 1e400, "circle", 2]]', "application/json", "size"),
        ('[["red", 1, "circle", 2], ["red", Infinity, "circle", 2]]', "application/json", "size"),
        ('[["red", 1, "circle", 2], ["red", "Infinity", "circle", 2]]', "application/json", "size"),
        ('{"color": "red", "weight": -Infinity}', "application/jsonlines", "weight"),
    ],
)
def test_non_finite_request_values_are_400_naming_row_and_column(
    server, body, content_type, column
):
    response = server.post(body, content_type)
    assert response.status_code == 400, response.text
    message = strict_json(response.text)["error"]
    row = "row 2" if body.startswith("[[") else "row 1"
    assert row in message and f"'{column}'" in message and "finite" in message


def test_deep_json_and_huge_integers_are_400_not_500(server):
    """Regression: 100,000-deep nesting and a 400-digit integer were answered 500."""
    deep = server.post("[" * 100_000 + "]" * 100_000, "application/json")
    assert deep.status_code == 400 and "nested too deeply" in deep.json()["error"]
    huge = server.post(f'[["red", {"9" * 400}, "circle", 2]]', "application/json")
    assert huge.status_code == 400 and "'size'" in huge.json()["error"]
    as_category = server.post(f'[[{"9" * 400}, 1, "circle", 2]]', "application/json")
    assert as_category.status_code == 200  # an unseen category, not an overflow
    nested = server.post('[["red", [1, 2], "circle", 2]]', "application/json")
    assert nested.status_code == 400 and "row 1, column 'size'" in nested.json()["error"]


def test_non_finite_predictions_are_null_and_the_response_is_strict_json(binary_model, tmp_path):
    """A broken model (NaN weights) answers null for each row, never NaN or Infinity."""
    base = tmp_path / "opt_ml"
    shutil.copytree(binary_model.model, base / "model")
    weights = load_file(base / "model" / "model.safetensors")
    name = next(k for k in weights if k.startswith("mlp.") and k.endswith("bias"))
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, base / "model" / "model.safetensors")
    server = Server(base)
    try:
        rows = csv_body(FEATURES.head(3))
        verbose = server.post(rows, accept="application/json;verbose")
        assert verbose.status_code == 200
        assert strict_json(verbose.text)["probabilities"] == [None] * 3
        assert strict_json(verbose.text)["predicted_label"] == [None] * 3
        as_csv = server.post(rows, accept="text/csv")
        assert as_csv.text == "\n\n\n"
        lines = server.post(rows, accept="application/jsonlines").text.splitlines()
        assert [strict_json(line)["probabilities"] for line in lines] == [None] * 3
    finally:
        server.stop()


def tamper(model: Path, file: str, change) -> None:
    """`change` edits the parsed JSON in place, or (a `raw` change) maps the file's bytes."""
    path = model / file
    if getattr(change, "raw", False):
        path.write_bytes(change(path.read_bytes()))
    else:
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))


def raw(change):
    change.raw = True
    return change


def set_key(*keys, value):
    def change(data):
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value

    return change


@pytest.mark.parametrize(
    "file, change, words",
    [
        ("model_config.json", set_key("n_blocks", value=10**6), ["'n_blocks'", "0 to 64"]),
        ("model_config.json", set_key("dim", value=64), ["does not match", "shape"]),
        ("model_config.json", set_key("n_outputs", value=3), ["'n_outputs'"]),
        (
            "model_config.json",
            set_key("frequency_init_scale", value=0),
            ["'frequency_init_scale'", "positive"],
        ),
        (
            "preprocessing.json",
            set_key("features", "numeric", 0, "quantiles", value="abc"),
            ["'quantiles'", "'abc'"],
        ),
        (
            "preprocessing.json",
            set_key("features", "numeric", 0, "median", value=float("nan")),
            ["'median'", "finite"],
        ),
        ("preprocessing.json", lambda data: data.pop("target"), ["without a prediction head"]),
        ("preprocessing.json", raw(lambda b: b"{not json"), ["preprocessing.json is not valid"]),
        ("model_config.json", raw(lambda b: b"[1, 2]"), ["must hold a JSON object"]),
        ("model.safetensors", raw(lambda b: b[: len(b) // 2]), ["model.safetensors"]),
        ("model.safetensors", raw(lambda b: b""), ["model.safetensors"]),
    ],
)
def test_damaged_artifact_stops_the_server_with_one_line_and_exit_1(
    binary_model, tmp_path, file, change, words
):
    """Regression: n_blocks 10**6 hung start-up, bad quantiles gave /ping 200 then 500 on
    every request, non-JSON preprocessing ended in a traceback, and the exit code varied."""
    base = tmp_path / "opt_ml"
    shutil.copytree(binary_model.model, base / "model")
    tamper(base / "model", file, change)
    result = subprocess.run(
        [sys.executable, str(SERVE_ENTRY)],
        env={
            **os.environ,
            "SAGEMAKER_BASE_DIR": str(base),
            "SAGEMAKER_BIND_TO_PORT": str(free_port()),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-2000:]
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "cannot serve" in errors[0], output[-2000:]
    for word in words:
        assert word in errors[0]


@pytest.mark.parametrize("accept", ["text/csv", "application/jsonlines"])
@pytest.mark.parametrize("content_type", ["text/csv", "application/jsonlines"])
def test_batch_mode_answers_a_blank_record_with_a_placeholder_line(
    binary_model, content_type, accept
):
    """Regression: a blank input line was dropped, so the output had fewer lines than the
    input and SageMaker's join of inputs and outputs went out of step."""
    server = Server(binary_model.base, SAGEMAKER_BATCH="true")
    try:
        rows = FEATURES.head(4)
        if content_type == "text/csv":
            lines = csv_body(rows).splitlines()
        else:
            lines = [json.dumps(r) for r in json.loads(rows.to_json(orient="records"))]
        records = [lines[0], "", lines[1], lines[2], "  ", lines[3], ""]
        response = server.post("\r\n".join(records) + "\r\n", content_type, accept=accept)
        assert response.status_code == 200, response.text
        out = response.text.split("\n")
        assert out[-1] == "" and len(out[:-1]) == len(records)
        placeholder = "" if accept == "text/csv" else '{"error": "blank record"}'
        for record, line in zip(records, out, strict=False):
            assert (line == placeholder) == (not record.strip()), (record, line)
        alone = server.post(csv_body(rows), content_type="text/csv", accept=accept)
        answered = [line for line in out if line and line != placeholder]
        assert answered == alone.text.splitlines()
    finally:
        server.stop()

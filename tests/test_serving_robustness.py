"""Property-based probing of the request codecs: whatever a client sends, the answer is a
2xx with one answer per row, or a 4xx with a message; never a 5xx, never a lost row, and
every JSON response is strict JSON. Mostly in-process (Flask's test client on
`create_app`), plus a few examples through the real gunicorn server."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
import requests
from conftest import FAST, Job, Server, make_table
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tabtransformer import load_model
from tabtransformer.serving.app import create_app

pytestmark = pytest.mark.slow
NAMES = ["color", "size", "shape", "weight"]  # categorical, numeric, categorical, numeric
CONTENT_TYPES = ["text/csv", "application/json", "application/jsonlines"]
PROBE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def model_job(tmp_path_factory) -> Job:
    job = Job(tmp_path_factory.mktemp("robust") / "opt_ml")
    job.channel("training", make_table("binary"), header=True)
    job.hyperparameters({**FAST, "n_epochs": "1", "target_column": "label"})
    assert job.train().returncode == 0
    return job


@pytest.fixture(scope="module")
def clients(model_job):
    """Test clients of the app as a real-time endpoint and as a batch transform."""
    predictor = load_model(model_job.model)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", "1")
        online = create_app(predictor).test_client()
        env.setenv("SAGEMAKER_BATCH", "true")
        batch = create_app(predictor).test_client()
    return {"online": online, "batch": batch}


def strict(text: str) -> Any:
    def refuse(name: str) -> None:
        raise ValueError(f"{name} in a response")

    return json.loads(text, parse_constant=refuse)


def answers(response, accept: str) -> int:
    """How many rows a 2xx response answers."""
    text = response.get_data(as_text=True)
    if accept == "application/json":
        return len(strict(text)["probabilities"])
    lines = text.split("\n")
    assert lines[-1] == ""  # every line, the last included, ends with a newline
    if accept == "application/jsonlines":
        for line in lines[:-1]:
            strict(line)
    return len(lines) - 1


def check(response, rows: int | None, accept: str = "application/json") -> None:
    """2xx with `rows` answers (when known), or 4xx with a message; never 5xx."""
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    if response.status_code >= 400:
        assert strict(response.get_data(as_text=True))["error"]
        return
    assert response.status_code == 200
    if rows is not None:
        assert answers(response, accept) == rows


def post(client, body: bytes | str, content_type: str, accept: str = "application/json"):
    return client.post(
        "/invocations", data=body, content_type=content_type, headers={"Accept": accept}
    )


# --- strategies ----------------------------------------------------------------------------

edge_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from([0, -0.0, 1e308, -1e308, 5e-324, 2**63, -(2**63) - 1, 10**19]),
)
number_text = st.one_of(
    edge_numbers.map(repr),
    st.sampled_from(["inf", "-inf", "Infinity", "NaN", "nan", "1e400", "-1e400", "0x10", "1_0"]),
)
cell_text = st.one_of(number_text, st.text(max_size=12), st.sampled_from(["red", "circle", ""]))
json_scalar = st.one_of(st.none(), st.booleans(), edge_numbers, st.text(max_size=12))
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=20,
)


def csv_text(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def finite_text(value: Any) -> bool:
    try:
        return abs(float(value)) < float("inf")
    except (TypeError, ValueError, OverflowError):
        return False


# --- in-process properties -----------------------------------------------------------------


@PROBE
@given(body=st.binary(max_size=400), content_type=st.sampled_from(CONTENT_TYPES))
def test_arbitrary_bytes_never_5xx(clients, body, content_type):
    check(post(clients["online"], body, content_type), None)


@PROBE
@given(
    rows=st.lists(st.lists(cell_text, min_size=1, max_size=6), min_size=1, max_size=8),
    accept=st.sampled_from(["application/json", "text/csv", "application/jsonlines"]),
)
def test_csv_shapes_answer_every_row_or_4xx(clients, rows, accept):
    response = post(clients["online"], csv_text(rows), "text/csv", accept)
    check(response, len(rows), accept)


@PROBE
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["red", "green", "blue", "purple", ""]),
            st.floats(min_value=-1e150, max_value=1e150) | st.integers(-(10**18), 10**18),
            st.text(max_size=8),
            st.none() | st.floats(min_value=-1e150, max_value=1e150),
        ),
        min_size=1,
        max_size=10,
    ),
    as_objects=st.booleans(),
)
def test_valid_json_rows_always_get_one_answer_each(clients, rows, as_objects):
    """Valid: numbers within the one bound of training and serving (1e150 in magnitude)."""
    instances = [dict(zip(NAMES, r, strict=True)) if as_objects else list(r) for r in rows]
    response = post(clients["online"], json.dumps({"instances": instances}), "application/json")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert answers(response, "application/json") == len(rows)


@PROBE
@given(value=json_value, wrap=st.booleans())
def test_json_shapes_never_5xx_nor_lose_rows(clients, value, wrap):
    body = json.dumps({"instances": value} if wrap else value)
    response = post(clients["online"], body, "application/json")
    rows = len(value) if isinstance(value, list) else None
    check(response, rows)


@PROBE
@given(size=number_text | edge_numbers, weight=number_text | edge_numbers)
def test_numbers_at_the_edges_are_answered_or_named(clients, size, weight):
    response = post(
        clients["online"], json.dumps([["red", size, "circle", weight]]), "application/json"
    )
    check(response, 1)
    if response.status_code == 400:
        message = strict(response.get_data(as_text=True))["error"]
        assert "row 1" in message and ("'size'" in message or "'weight'" in message)
    else:
        for value in (size, weight):  # only finite numbers (or missing) are predicted
            text = str(value).strip().lower()
            assert finite_text(value) or text in ("nan", "")


@PROBE
@given(
    lines=st.lists(
        st.one_of(st.just(""), st.just("  "), st.just("red,1.5,circle,2"), cell_text),
        min_size=1,
        max_size=10,
    ),
    accept=st.sampled_from(["text/csv", "application/jsonlines"]),
    ending=st.sampled_from(["\n", "\r\n"]),
)
def test_batch_mode_one_output_line_per_input_line(clients, lines, accept, ending):
    body = "".join(line.replace("\n", " ").replace("\r", " ") + ending for line in lines)
    check(post(clients["batch"], body, "text/csv", accept), len(lines), accept)


# --- through the real server --------------------------------------------------------------


@pytest.fixture(scope="module")
def server(model_job):
    server = Server(model_job.base, SAGEMAKER_MAX_PAYLOAD_IN_MB="0.01")  # 10,485 bytes
    yield server
    server.stop()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=300), content_type=st.sampled_from(CONTENT_TYPES))
def test_real_server_arbitrary_bytes_never_5xx(server, body, content_type):
    response = server.post(body, content_type)
    assert response.status_code < 500 and response.status_code in (200, 400), response.text
    strict(response.text)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_rows=st.integers(1, 1400), chunk_rows=st.integers(1, 500))
def test_real_server_limit_holds_however_the_body_is_framed(server, n_rows, chunk_rows):
    row = b"red,1.5,circle,2\n"  # 17 bytes; the limit is 10,485 bytes (616 rows)
    limit = int(0.01 * 1024 * 1024)

    def chunks():
        for start in range(0, n_rows, chunk_rows):
            yield row * min(chunk_rows, n_rows - start)

    for data in (chunks(), row * n_rows):  # chunked, then with Content-Length
        response = requests.post(
            server.url + "/invocations", data=data, headers={"Content-Type": "text/csv"}, timeout=30
        )
        if len(row) * n_rows > limit:
            assert response.status_code == 413
        else:
            assert response.status_code == 200
            assert len(strict(response.text)["probabilities"]) == n_rows

"""No request stalls a worker and nothing a client sends is answered 500: the compute
budget and deadline, HTTP framing, Unicode in JSON, one rule for missing values and
magnitudes, q-values, and server settings checked before forking — against the real
gunicorn server on loopback (plus the budget's arithmetic in process)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests
from conftest import FAST, SERVE_ENTRY, Job, Server, free_port, make_table
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tabtransformer import load_model
from tabtransformer.errors import UserError
from tabtransformer.serving.app import ComputeBudget, create_app
from tabtransformer.serving.settings import ServingSettings

pytestmark = pytest.mark.slow
TABLE = make_table("binary", n=240)
FEATURES = TABLE.drop(columns="label")
ROW = {"color": "red", "size": 10.5, "shape": "circle", "weight": 2.0}
FEW = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def binary_model(tmp_path_factory) -> Job:
    job = Job(tmp_path_factory.mktemp("reliable") / "opt_ml")
    job.channel("training", TABLE, header=True)
    job.hyperparameters({**FAST, "n_epochs": "1", "target_column": "label"})
    assert job.train().returncode == 0
    return job


@pytest.fixture(scope="module")
def server(binary_model):
    server = Server(binary_model.base, SAGEMAKER_MAX_PAYLOAD_IN_MB="6")
    yield server
    server.stop()


def raw_exchange(
    port: int, data: bytes, wait: float = 10.0, then_close: bool = False
) -> tuple[bytes, float]:
    """Send raw bytes (`then_close`: and end the sending side, as a client that has sent
    all it will), read the status line; (status line, seconds it took)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as client:
        client.sendall(data)
        if then_close:
            client.shutdown(socket.SHUT_WR)
        line = client.makefile("rb").readline()
    return line, time.monotonic() - start


def chunked(body: bytes) -> bytes:
    return (
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + body
    )


# --- one request cannot take a worker down -------------------------------------------------


def test_an_explain_request_over_the_budget_is_413_at_once_and_ping_keeps_answering(
    binary_model,
):
    """Regression: 100,000 rows with ;explain on one worker with a 10 s timeout ran until
    gunicorn killed the worker; /ping timed out meanwhile and the client got no status."""
    server = Server(
        binary_model.base,
        SAGEMAKER_MODEL_SERVER_WORKERS="1",
        SAGEMAKER_MODEL_SERVER_TIMEOUT="10",
    )
    try:
        body = (FEATURES.to_csv(header=False, index=False) * 420).encode()  # ~100,000 rows
        n_rows = body.count(b"\n")
        answers: dict[str, requests.Response] = {}

        def ask(name: str, data: bytes) -> None:
            answers[name] = requests.post(
                server.url + "/invocations",
                data=data,
                headers={"Content-Type": "text/csv", "Accept": "application/json;explain"},
                timeout=30,
            )

        start = time.monotonic()
        ask("big", body)
        elapsed = time.monotonic() - start
        big = answers["big"]
        assert elapsed < 10, f"the answer took {elapsed:.1f} s, past the server timeout"
        assert big.status_code in (200, 413), big.text[:300]
        if big.status_code == 200:  # a fast machine: every row answered
            assert len(big.json()["attributions"]) == n_rows
            fit = n_rows
        else:
            message = big.json()["error"]
            assert f"{n_rows} rows with attributions" in message and "at most" in message
            fit = int(message.split("at most ")[1].split(" rows")[0])
            assert 0 < fit < n_rows
        # The most rows that fit, asked for: answered, and /ping answers all the while.
        rows_that_fit = b"".join(body.splitlines(keepends=True)[: min(fit, n_rows)])
        worker = threading.Thread(target=ask, args=("fit", rows_that_fit))
        worker.start()
        pings = []
        while worker.is_alive():
            ping_start = time.monotonic()
            assert requests.get(server.url + "/ping", timeout=2).status_code == 200
            pings.append(time.monotonic() - ping_start)
            time.sleep(0.05)
        worker.join()
        assert answers["fit"].status_code in (200, 413), answers["fit"].text[:300]
        assert max(pings) < 2.0, f"/ping took up to {max(pings):.2f} s during a request"
        assert server.post(FEATURES.head(2).to_csv(header=False, index=False)).status_code == 200
    finally:
        server.stop()


def test_the_budget_refuses_before_computing_and_the_deadline_stops_a_late_computation(
    binary_model,
):
    """In process: rows x forward passes over the budget is a 413 naming the rows that fit;
    a computation that runs late stops at the deadline with a 413, not a stuck worker."""
    predictor = load_model(binary_model.model)
    config = ServingSettings(timeout_s=10)
    body = FEATURES.head(100).to_csv(header=False, index=False)
    headers = {"Content-Type": "text/csv", "Accept": "application/json;explain"}
    small = ComputeBudget(row_passes_per_second=100, seconds=1, deadline_s=10)
    client = create_app(predictor, config, small).test_client()
    answer = client.post("/invocations", data=body, headers=headers)
    assert answer.status_code == 413
    assert "send at most 16 rows" in answer.get_json()["error"]  # 100 // 6 passes per row
    plain = {"Content-Type": "text/csv"}
    assert client.post("/invocations", data=body, headers=plain).status_code == 200  # 100 fit
    one_more = FEATURES.head(101).to_csv(header=False, index=False)
    assert client.post("/invocations", data=one_more, headers=plain).status_code == 413
    late = ComputeBudget(row_passes_per_second=1e12, seconds=1, deadline_s=-1)
    answer = (
        create_app(predictor, config, late)
        .test_client()
        .post("/invocations", data=body, headers=headers)
    )
    assert answer.status_code == 413 and "at most" in answer.get_json()["error"]
    measured = ComputeBudget.measure(predictor, timeout_s=10)
    assert measured.row_passes_per_second > 0 and measured.seconds == 5


# --- HTTP framing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"ZZ\r\nred,1,circle,2\n\r\n0\r\n\r\n",  # a chunk size that is not hexadecimal
        b"f" * 9000,  # a chunk-size line over 8 KB, no terminator
        b"5\r\nred,1XX0\r\n\r\n",  # a chunk without its CRLF
    ],
    ids=["invalid size", "size line over 8 KB", "missing terminator"],
)
def test_malformed_chunked_framing_is_400_at_once(server, body):
    """Regression: an invalid chunk size was a 500 with a traceback; a long size line hung."""
    line, elapsed = raw_exchange(server.port, chunked(body))
    assert b" 400 " in line, line
    assert elapsed < 5
    assert "prediction failed" not in server.output()
    assert server.post(FEATURES.head(1).to_csv(header=False, index=False)).status_code == 200


@FEW
@given(
    size=st.text(st.characters(codec="ascii", exclude_characters="\r\n"), min_size=1, max_size=20),
    rest=st.binary(max_size=64),
)
def test_any_chunked_framing_is_answered_without_a_5xx(server, size, rest):
    """Whatever a chunked body's size line and bytes are, once the client has sent all it
    will: 2xx or 4xx, within seconds (a body cut short is a 400, not a wait)."""
    data = chunked(size.encode() + b"\r\n" + rest + b"\r\n0\r\n\r\n")
    try:
        line, _ = raw_exchange(server.port, data, wait=15, then_close=True)
    except TimeoutError:
        pytest.fail(f"no answer within 15 s to a chunked body {data[-80:]!r}")
    assert line.startswith(b"HTTP/1.1 "), line
    status = int(line.split()[1])
    assert status < 500, line


def test_a_declared_length_over_the_limit_is_413_before_the_body(server):
    """Regression: 7 MiB declared, 10 bytes sent waited 60 s for a 408."""
    request = (
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
        + f"Content-Length: {7 * 1024 * 1024}\r\n\r\n".encode()
        + b"red,1,circ"
    )
    line, elapsed = raw_exchange(server.port, request)
    assert b" 413 " in line, line
    assert elapsed < 3, f"the 413 took {elapsed:.1f} s"
    assert server.post(FEATURES.head(1).to_csv(header=False, index=False)).status_code == 200


@pytest.mark.parametrize("chunked_upload", [True, False], ids=["chunked", "Content-Length"])
def test_a_413_closes_its_connection_and_the_next_request_on_the_session_is_answered(
    server, chunked_upload
):
    """An over-limit body is answered 413 with Connection: close (its rest is drained, not
    read as the next request): a keep-alive client's next request gets a fresh connection."""
    row = FEATURES.head(1).to_csv(header=False, index=False).encode()
    big = row * (7 * 1024 * 1024 // len(row))
    data = (big[i : i + 16384] for i in range(0, len(big), 16384)) if chunked_upload else big
    session = requests.Session()
    headers = {"Content-Type": "text/csv"}
    over = session.post(server.url + "/invocations", data=data, headers=headers, timeout=30)
    assert over.status_code == 413 and over.headers.get("Connection") == "close"
    good = session.post(server.url + "/invocations", data=row * 3, headers=headers, timeout=30)
    assert good.status_code == 200 and len(good.json()["probabilities"]) == 3


# --- Unicode, missing values, magnitudes, rows of either kind, q-values -----------------


lone = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"])
text_with_lone = st.builds(
    lambda a, s, b: a + s + b, st.text(max_size=3), lone, st.text(max_size=3)
)


@FEW
@given(
    where=st.sampled_from(["key", "value", "list value"]),
    text=text_with_lone,
    lines=st.booleans(),
)
def test_a_lone_surrogate_in_json_is_400_naming_the_row(server, where, text, lines):
    """Regression: a lone surrogate in a JSON key or value was a 500 (UnicodeEncodeError)."""
    if where == "key":
        row = {**ROW, text: 1}
    elif where == "value":
        row = {**ROW, "color": text}
    else:
        row = ["red", 1.0, text, 2.0]
    rows = [ROW, row]
    if lines:
        body = "\n".join(json.dumps(r) for r in rows)
        response = server.post(body, "application/jsonlines")
    else:
        response = server.post(json.dumps({"instances": rows}), "application/json")
    assert response.status_code == 400, response.text
    assert "row 2" in response.json()["error"] and "surrogate" in response.json()["error"]


def test_a_character_beyond_the_basic_plane_is_text_like_any_other(server):
    """A surrogate pair (one character, e.g. an emoji) is a valid category value."""
    response = server.post(json.dumps([{**ROW, "color": "\U0001f600"}]), "application/json")
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("missing", ["", "nan", "NA", "null", None])
def test_missing_values_are_the_same_in_json_and_csv(server, missing):
    """Regression: JSON "" or "nan" in a numeric column was a 400 while CSV reads both as
    missing: a JSON row with it answers as the CSV row with an empty cell."""
    as_json = server.post(json.dumps([{**ROW, "size": missing}]), "application/json")
    as_csv = server.post("red,,circle,2.0\n", "text/csv")
    assert as_json.status_code == 200, as_json.text
    assert as_json.json() == as_csv.json()


@pytest.mark.parametrize(
    "body, content_type",
    [
        ("red,1e200,circle,2\n", "text/csv"),
        (json.dumps([{**ROW, "weight": -1e151}]), "application/json"),
    ],
)
def test_numbers_beyond_the_training_bound_are_400_naming_the_bound(server, body, content_type):
    """Regression: training refused magnitudes over 1e150 while serving took 1e308."""
    response = server.post(body, content_type)
    assert response.status_code == 400, response.text
    assert "1e+150" in response.json()["error"] and "row 1" in response.json()["error"]
    assert server.post("red,1e149,circle,2\n").status_code == 200


def test_json_lines_may_mix_list_and_object_lines(server):
    """Regression: a list line beside an object line was a 400; either kind is one row."""
    body = json.dumps(["red", 10.5, "circle", 2.0]) + "\n" + json.dumps(ROW) + "\n"
    response = server.post(body, "application/jsonlines", accept="application/json")
    assert response.status_code == 200, response.text
    first, second = response.json()["probabilities"]
    assert first == pytest.approx(second)


@pytest.mark.parametrize(
    "accept, status, kind",
    [
        ("text/csv;q=0, application/json", 200, "application/json"),
        ("text/csv;q=0.2, application/jsonlines;q=0.9", 200, "application/jsonlines"),
        ("application/json;q=0.5, text/csv", 200, "text/csv"),
        ("text/csv;q=0", 406, None),
        ("text/csv;q=2", 400, None),
    ],
)
def test_accept_q_values_rank_the_types_and_q0_refuses_one(server, accept, status, kind):
    """Regression: text/csv;q=0 was chosen anyway."""
    response = server.post("red,1,circle,2\n", accept=accept)
    assert response.status_code == status, response.text
    if kind:
        assert response.headers["Content-Type"].startswith(kind)


# --- server settings, checked in the master before forking ----------------------------


BAD_SETTINGS = [
    ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "inf"),
    ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "nan"),
    ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "0"),
    ("SAGEMAKER_BIND_TO_PORT", "99999"),
    ("SAGEMAKER_BIND_TO_PORT", "0"),
    ("SAGEMAKER_MODEL_SERVER_WORKERS", "0"),
    ("SAGEMAKER_MODEL_SERVER_TIMEOUT", "1.5"),
    ("SAGEMAKER_BATCH", "maybe"),
    ("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "text/html"),
]


@pytest.mark.parametrize("name, value", BAD_SETTINGS)
def test_a_bad_server_setting_stops_the_master_with_one_line_and_exit_1(binary_model, name, value):
    """Regression: SAGEMAKER_MAX_PAYLOAD_IN_MB=inf restarted dying workers forever, and
    SAGEMAKER_BIND_TO_PORT=99999 ended in a traceback."""
    env = {
        **os.environ,
        "SAGEMAKER_BASE_DIR": str(binary_model.base),
        "SAGEMAKER_BIND_TO_PORT": str(free_port()),
        name: value,
    }
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(SERVE_ENTRY)], env=env, capture_output=True, text=True, timeout=60
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-2000:]
    assert "Traceback" not in output and "Booting worker" not in output
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"{name}={value!r}" in errors[0], output[-2000:]
    assert time.monotonic() - start < 30


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from([n for n, _ in BAD_SETTINGS] + ["SAGEMAKER_MODEL_SERVER_TIMEOUT"]),
    value=st.text(max_size=12),
)
def test_every_server_setting_is_valid_or_a_user_error_naming_it(name, value):
    """Any value of any setting: typed settings within their ranges, or a UserError that
    names the variable (never another exception)."""
    try:
        parsed = ServingSettings.from_env({name: value})
    except UserError as error:
        assert name in str(error)
        return
    assert 1 <= parsed.port <= 65535 and parsed.workers >= 1 and parsed.timeout_s >= 1
    assert 0 < parsed.max_payload_mb <= 1024 and isinstance(parsed.batch, bool)

"""The Flask app: `/ping`, `/invocations`, `/execution-parameters`.

Every bad request gets a 4xx whose JSON body names the row and column at fault; only a
fault of the model itself gives 500. The body is read up to the payload limit plus one
byte, however it is framed (Content-Length or chunked): more is a 413, never a silently
shortened body; a Content-Length over the limit is a 413 before any of the body is read.
Every response is strict JSON (no NaN or Infinity).

No request holds a worker past the server timeout: each one's cost (rows x forward
passes: 1 to predict, +1 for embeddings, +F+1 for attributions over F columns) is checked
against a `ComputeBudget` measured when the app starts, before any computing (else a 413
saying how many rows fit), and the batched computation stops at a deadline. Decoding,
computing and encoding run through `offload` (the server gives a native thread, so that
`/ping` answers meanwhile).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, TypeVar

import numpy as np
import pandas as pd
from flask import Flask, Response, request
from sagemaker_inference.errors import BaseInferenceToolkitError, GenericInferenceToolkitError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from tabtransformer.errors import UserError
from tabtransformer.inference import DeadlinePassed, Predictor
from tabtransformer.serving import codecs
from tabtransformer.serving.accept import negotiate
from tabtransformer.serving.settings import ServingSettings

log = logging.getLogger(__name__)
T = TypeVar("T")
READ_CHUNK = 1 << 16
DRAIN_LIMIT = 64 << 20
# Shares of the server timeout: what a request's estimated computing may take, and when a
# running computation stops (the rest is for reading, decoding and answering).
COMPUTE_SHARE = 0.5
DEADLINE_SHARE = 0.85
CALIBRATION_ROWS = 512
UNREAD_BODY = "tabtransformer.unread_body"  # environ key: the server drains and closes


@dataclass(frozen=True)
class ComputeBudget:
    """How much one request may compute: `row_passes_per_second` measured on this
    model and machine, `seconds` of it per request, `deadline_s` after the request starts
    a computation stops."""

    row_passes_per_second: float
    seconds: float
    deadline_s: float

    @property
    def row_passes(self) -> int:
        """Rows x forward passes one request may ask for."""
        return max(1, int(self.row_passes_per_second * self.seconds))

    @classmethod
    def measure(cls, predictor: Predictor, timeout_s: float) -> ComputeBudget:
        """Time predictions of CALIBRATION_ROWS rows (the faster of two runs)."""
        frame = pd.DataFrame([[None] * len(predictor.feature_names)] * CALIBRATION_ROWS)
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            predictor.outputs(frame)
            best = min(best, time.perf_counter() - start)
        rate = CALIBRATION_ROWS / max(best, 1e-6)
        return cls(rate, COMPUTE_SHARE * timeout_s, DEADLINE_SHARE * timeout_s)

    def check(self, rows: int, passes: int, what: str) -> None:
        """A 413 naming how many rows fit when `rows` x `passes` is over the budget."""
        if rows * passes > self.row_passes:
            raise GenericInferenceToolkitError(413, self.too_costly(rows, passes, what))

    def too_costly(self, rows: int, passes: int, what: str) -> str:
        fit = max(1, self.row_passes // passes)
        return (
            f"{rows} rows{what} ({passes} forward pass(es) per row) would take longer than "
            f"this endpoint allows one request (SAGEMAKER_MODEL_SERVER_TIMEOUT): send at most "
            f"{fit} rows per request."
        )


def call(compute: Callable[[], T]) -> T:
    """Run `compute` here (the default `offload`)."""
    return compute()


class BodyTooLarge(RequestEntityTooLarge):
    """The body is over the payload limit (answered at once; the rest is drained after)."""


def read_body(stream: IO[bytes], content_length: int | None, limit: int) -> bytes:
    """The whole body, at most `limit` bytes: one byte more is a 413, however the body is
    framed; a Content-Length over the limit is a 413 before reading anything."""
    chunks, size = [], 0
    if content_length is None or content_length <= limit:
        while size <= limit:
            chunk = stream.read(min(READ_CHUNK, limit + 1 - size))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
    raise BodyTooLarge()


def drain(stream: IO[bytes], limit: int = DRAIN_LIMIT) -> None:
    """Read and drop what is left of a body (up to `limit`), so that a client still sending
    reads the answer instead of a reset connection."""
    size = 0
    while size < limit and (chunk := stream.read(READ_CHUNK)):
        size += len(chunk)


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, allow_nan=False), status=status, mimetype="application/json")


def create_app(
    predictor: Predictor,
    settings: ServingSettings | None = None,
    budget: ComputeBudget | None = None,
    offload: Callable[[Callable[[], Any]], Any] = call,
) -> Flask:
    """A Flask app serving `predictor` (already loaded: /ping is 200 from the start).
    `settings`: from the environment when None; `budget`: measured here when None;
    `offload` runs each request's decoding, computing and encoding."""
    settings = settings or ServingSettings.from_env()
    budget = budget or ComputeBudget.measure(predictor, settings.timeout_s)
    app = Flask("tabtransformer")
    limit = settings.payload_limit
    log.info(
        "a request may compute %s row-passes (%.0f per second measured)",
        f"{budget.row_passes:,}",
        budget.row_passes_per_second,
    )

    def error(status: int, message: str) -> Response:
        return json_response({"error": message}, status)

    @app.get("/ping")
    def ping() -> Response:
        return Response(status=200)

    @app.get("/execution-parameters")
    def execution_parameters() -> Response:
        return json_response(
            {
                "MaxConcurrentTransforms": settings.workers,
                "BatchStrategy": "MULTI_RECORD",
                "MaxPayloadInMB": max(1, int(settings.max_payload_mb)),
            }
        )

    @app.post("/invocations")
    def invocations() -> Response:
        started = time.monotonic()
        fmt = negotiate(request.headers.get("Accept"), settings.default_accept)
        body = read_body(request.environ["wsgi.input"], request.content_length, limit)
        content_type = request.content_type

        def answer() -> str:
            records = codecs.decode(body, content_type, predictor, settings.batch)
            frame = records.frame
            codecs.check_answer_size(fmt, len(frame), predictor, limit)
            passes = predictor.forward_passes(embeddings=fmt.embeddings, explain=fmt.explain)
            budget.check(len(frame), passes, _asked(fmt))
            deadline = started + budget.deadline_s
            try:
                return _computed(predictor, records, fmt, settings.batch, deadline)
            except DeadlinePassed:
                raise GenericInferenceToolkitError(
                    413, budget.too_costly(len(frame), passes, _asked(fmt))
                ) from None

        text = offload(answer)
        return Response(
            text, status=200, mimetype=codecs.response_content_type(fmt, settings.batch)
        )

    @app.errorhandler(UserError)
    def bad_request(e: UserError) -> Response:
        return error(400, str(e))

    @app.errorhandler(BaseInferenceToolkitError)
    def toolkit_error(e: BaseInferenceToolkitError) -> Response:  # 406, 413 and 415
        return error(e.status_code, e.message)

    @app.errorhandler(413)
    def too_large(e: HTTPException) -> Response:
        if isinstance(e, BodyTooLarge):
            request.environ[UNREAD_BODY] = True
        return error(
            413,
            f"The request body is larger than {settings.max_payload_mb:g} MB "
            "(SAGEMAKER_MAX_PAYLOAD_IN_MB): split it into smaller requests.",
        )

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> Response:
        return error(e.code or 500, e.description or e.name)

    @app.errorhandler(Exception)
    def model_fault(e: Exception) -> Response:
        log.exception("prediction failed")
        return error(500, f"The model failed on this request ({type(e).__name__}).")

    return app


def _asked(fmt: codecs.ResponseFormat) -> str:
    extras = [
        name for name, on in (("embeddings", fmt.embeddings), ("attributions", fmt.explain)) if on
    ]
    return f" with {' and '.join(extras)}" if extras else ""


def _computed(
    predictor: Predictor,
    records: codecs.Records,
    fmt: codecs.ResponseFormat,
    one_line_per_record: bool,
    deadline: float,
) -> str:
    """Predictions (and embeddings, attributions) of the records, encoded as `fmt` asks."""
    frame, rows = records.frame, len(records.frame)
    predictions = predictor.outputs(frame, deadline) if rows else np.empty(0)
    embeddings = predictor.embed(frame, deadline=deadline) if fmt.embeddings and rows else None
    attributions = predictor.explain(frame, deadline) if fmt.explain and rows else None
    answer = codecs.Answer(predictions, records.blank, embeddings, attributions)
    return codecs.encode(answer, predictor, fmt, one_line_per_record)

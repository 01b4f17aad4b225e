"""The Flask app: `/ping`, `/invocations`, `/execution-parameters`.

Every bad request gets a 4xx whose JSON body names the row and column at fault; only a
fault of the model itself gives 500. The body is read up to the payload limit plus one
byte, however it is framed (Content-Length or chunked): more is a 413, never a silently
shortened body. Every response is strict JSON (no NaN or Infinity).
"""

from __future__ import annotations

import json
import logging
import os
from typing import IO, Any

import numpy as np
from flask import Flask, Response, request
from sagemaker_inference.errors import BaseInferenceToolkitError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from tabtransformer.errors import UserError
from tabtransformer.inference import Predictor
from tabtransformer.serving import codecs

log = logging.getLogger(__name__)
DEFAULT_MAX_PAYLOAD_MB = 6
READ_CHUNK = 1 << 16
DRAIN_LIMIT = 64 << 20


def max_payload_mb() -> float:
    raw = os.environ.get("SAGEMAKER_MAX_PAYLOAD_IN_MB", str(DEFAULT_MAX_PAYLOAD_MB))
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise UserError(
            f"Environment variable SAGEMAKER_MAX_PAYLOAD_IN_MB={raw!r} must be a "
            "positive number of megabytes."
        )
    return value


def batch_mode() -> bool:
    return os.environ.get("SAGEMAKER_BATCH", "false").lower() == "true"


def read_body(stream: IO[bytes], content_length: int | None, limit: int) -> bytes:
    """The whole body, at most `limit` bytes: one byte more is a 413, however the body is
    framed. An over-limit body is read on and dropped (up to DRAIN_LIMIT) before the 413, so
    that the client, still sending, reads the answer instead of a reset connection."""
    chunks, size = [], 0
    if content_length is None or content_length <= limit:
        while size <= limit:
            chunk = stream.read(min(READ_CHUNK, limit + 1 - size))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
    while size < DRAIN_LIMIT and (chunk := stream.read(READ_CHUNK)):
        size += len(chunk)
    raise RequestEntityTooLarge()


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, allow_nan=False), status=status, mimetype="application/json")


def create_app(predictor: Predictor, workers: int = 1) -> Flask:
    """A Flask app serving `predictor` (already loaded: /ping is 200 from the start)."""
    app = Flask("tabtransformer")
    limit = int(max_payload_mb() * 1024 * 1024)
    default_accept = os.environ.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "application/json")
    one_line_per_record = batch_mode()

    def error(status: int, message: str) -> Response:
        return json_response({"error": message}, status)

    @app.get("/ping")
    def ping() -> Response:
        return Response(status=200)

    @app.get("/execution-parameters")
    def execution_parameters() -> Response:
        return json_response(
            {
                "MaxConcurrentTransforms": workers,
                "BatchStrategy": "MULTI_RECORD",
                "MaxPayloadInMB": int(max_payload_mb()),
            }
        )

    @app.post("/invocations")
    def invocations() -> Response:
        fmt = codecs.negotiate(request.headers.get("Accept"), default_accept)
        body = read_body(request.environ["wsgi.input"], request.content_length, limit)
        records = codecs.decode(body, request.content_type, predictor, one_line_per_record)
        frame = records.frame
        codecs.check_answer_size(fmt, len(frame), predictor, limit)
        predictions = predictor.predict(frame) if len(frame) else np.empty(0)
        embeddings = predictor.embed(frame) if fmt.embeddings and len(frame) else None
        attributions = predictor.explain(frame) if fmt.explain and len(frame) else None
        text = codecs.encode(
            predictions,
            predictor,
            fmt,
            one_line_per_record,
            records.blank,
            embeddings,
            attributions,
        )
        return Response(
            text, status=200, mimetype=codecs.response_content_type(fmt, one_line_per_record)
        )

    @app.errorhandler(UserError)
    def bad_request(e: UserError) -> Response:
        return error(400, str(e))

    @app.errorhandler(BaseInferenceToolkitError)
    def toolkit_error(e: BaseInferenceToolkitError) -> Response:  # 406 and 415
        return error(e.status_code, e.message)

    @app.errorhandler(413)
    def too_large(e: HTTPException) -> Response:
        return error(
            413,
            f"The request body is larger than {max_payload_mb():g} MB "
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

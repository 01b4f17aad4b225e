"""The Flask app: `/ping`, `/invocations`, `/execution-parameters`.

Every bad request gets a 4xx whose JSON body names the row and column at fault; only a
fault of the model itself gives 500. The body size is bounded before it is read.
"""

from __future__ import annotations

import logging
import os

from flask import Flask, Response, jsonify, request
from sagemaker_inference.errors import BaseInferenceToolkitError
from werkzeug.exceptions import HTTPException

from tabtransformer.errors import UserError
from tabtransformer.inference import Predictor
from tabtransformer.serving import codecs

log = logging.getLogger(__name__)
DEFAULT_MAX_PAYLOAD_MB = 6


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


def create_app(predictor: Predictor, workers: int = 1) -> Flask:
    """A Flask app serving `predictor` (already loaded: /ping is 200 from the start)."""
    app = Flask("tabtransformer")
    app.config["MAX_CONTENT_LENGTH"] = int(max_payload_mb() * 1024 * 1024)
    default_accept = os.environ.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "application/json")
    one_line_per_row = batch_mode()

    def error(status: int, message: str) -> Response:
        response = jsonify({"error": message})
        response.status_code = status
        return response

    @app.get("/ping")
    def ping() -> Response:
        return Response(status=200)

    @app.get("/execution-parameters")
    def execution_parameters() -> Response:
        return jsonify(
            {
                "MaxConcurrentTransforms": workers,
                "BatchStrategy": "MULTI_RECORD",
                "MaxPayloadInMB": int(max_payload_mb()),
            }
        )

    @app.post("/invocations")
    def invocations() -> Response:
        fmt = codecs.negotiate(request.headers.get("Accept"), default_accept)
        frame = codecs.decode(request.get_data(cache=False), request.content_type, predictor)
        predictions = predictor.predict(frame)
        body = codecs.encode(predictions, predictor, fmt, one_line_per_row)
        return Response(
            body, status=200, mimetype=codecs.response_content_type(fmt, one_line_per_row)
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

    return app

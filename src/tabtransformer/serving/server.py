"""`serve`: gunicorn running the Flask app, configured from SageMaker's environment.

SAGEMAKER_BIND_TO_PORT (8080), SAGEMAKER_MODEL_SERVER_WORKERS (one per CPU),
SAGEMAKER_MODEL_SERVER_TIMEOUT (60 s); the model is read from `model/` under
SAGEMAKER_BASE_DIR (or /opt/ml) once in each worker, and each worker gets an equal share
of the CPU threads so workers do not fight over cores.

Workers are gevent workers: a connection waiting for its request body costs a greenlet,
not a worker, so slow or stalled uploads cannot hold up other requests (a sync worker is
tied to one upload until the timeout). Inference itself runs one request at a time per
worker, as before. A request body must arrive within the request timeout (else 408), and
request headers within the keep-alive time.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import warnings
from collections.abc import Callable, Iterable
from typing import IO, Any

import gevent
import pandas as pd
import torch
from gunicorn.app.base import BaseApplication
from werkzeug.exceptions import RequestTimeout

from tabtransformer.artifacts import load_model, validate_artifact
from tabtransformer.errors import USER_ERROR_EXIT_CODE, UserError
from tabtransformer.paths import SageMakerPaths
from tabtransformer.serving.app import create_app, max_payload_mb

log = logging.getLogger(__name__)


def positive_int_env(name: str, default: int) -> int:
    """An integer setting from the environment; a bad value is a UserError naming it."""
    raw = os.environ.get(name, str(default))
    if not raw.strip().isdigit() or int(raw) < 1:
        raise UserError(f"Environment variable {name}={raw!r} must be a positive integer.")
    return int(raw)


def server_settings() -> dict[str, Any]:
    """Gunicorn settings from the SageMaker environment variables."""
    return {
        "bind": f"0.0.0.0:{positive_int_env('SAGEMAKER_BIND_TO_PORT', 8080)}",
        "workers": positive_int_env("SAGEMAKER_MODEL_SERVER_WORKERS", os.cpu_count() or 1),
        "worker_class": "gevent",
        "worker_connections": 1000,
        "timeout": positive_int_env("SAGEMAKER_MODEL_SERVER_TIMEOUT", 60),
        "graceful_timeout": 30,
        "keepalive": 5,
        "accesslog": "-",
        "errorlog": "-",
        "loglevel": "info",
        "limit_request_line": 8190,
        "control_socket_disable": True,  # a shared default path; SageMaker does not use it
        "post_fork": stop_if_asked_while_booting,
    }


def stop_if_asked_while_booting(arbiter: Any, worker: Any) -> None:
    """Right after the fork: a SIGTERM that reaches a worker before gunicorn installs its
    own handlers (the gevent worker patches for a second or so first) would run the
    master's inherited handler and be lost, and the worker would then hold shutdown for
    the whole graceful timeout. Here it makes the worker stop as soon as it is up."""
    signal.signal(signal.SIGTERM, lambda *_: setattr(worker, "alive", False))


class BodyDeadline:
    """WSGI middleware: the whole request body must arrive within `seconds` of the request
    start, else the read raises 408 (a trickling upload cannot hold a connection forever)."""

    def __init__(self, app: Callable[..., Iterable[bytes]], seconds: float):
        self.app = app
        self.seconds = seconds

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        environ["wsgi.input"] = _DeadlineStream(
            environ["wsgi.input"], time.monotonic() + self.seconds, self.seconds
        )
        return self.app(environ, start_response)


class _DeadlineStream:
    """A request body stream whose reads stop at a deadline (gevent: the wait yields)."""

    def __init__(self, stream: IO[bytes], deadline: float, seconds: float):
        self.stream = stream
        self.deadline = deadline
        self.seconds = seconds

    def _timed(self, read: Callable[..., bytes], *args: Any) -> bytes:
        late = RequestTimeout(
            f"The request body did not arrive within {self.seconds:g} s "
            "(SAGEMAKER_MODEL_SERVER_TIMEOUT)."
        )
        with gevent.Timeout(max(self.deadline - time.monotonic(), 0.001), late):
            return read(*args)

    def read(self, size: int | None = -1) -> bytes:
        return self._timed(self.stream.read, size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._timed(self.stream.readline, size)

    def __iter__(self):
        return iter(self.readline, b"")


class Server(BaseApplication):
    """Gunicorn application that loads the model in each worker (no preload, no fork
    sharing of torch state)."""

    def __init__(self, settings: dict[str, Any]):
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.settings.items():
            self.cfg.set(key, value)

    def load(self):
        workers = self.settings["workers"]
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
        model_dir = SageMakerPaths.from_env().model
        predictor = load_model(model_dir)
        # One all-missing row through the whole path: a model that cannot predict stops
        # the worker from booting instead of answering 500 to every request.
        predictor.predict(pd.DataFrame([[None] * len(predictor.feature_names)]))
        log.info(
            "worker %d: model loaded from %s (%s, %d features)",
            os.getpid(),
            model_dir,
            predictor.task,
            len(predictor.feature_names),
        )
        return BodyDeadline(create_app(predictor, workers), self.settings["timeout"])


def run_server() -> int:
    """Run gunicorn in the foreground until SIGTERM (graceful shutdown).

    A damaged artifact or a bad setting stops it before any worker starts, with one line
    and exit code 1; so does a worker that fails to load the model (gunicorn's own code for
    that varies)."""
    model_dir = SageMakerPaths.from_env().model
    # Validate everything, but load nothing with torch here: a torch thread pool started
    # before gunicorn forks its workers deadlocks them.
    validate_artifact(model_dir)
    settings = server_settings()
    max_payload_mb()  # checked here, before any worker starts
    # gevent's monkey-patching walks every object once; torch.distributed warns when touched.
    warnings.filterwarnings("ignore", message=".*reduce_op", category=FutureWarning)
    try:
        Server(settings).run()
    except SystemExit as stopped:
        if stopped.code not in (None, 0):
            log.error("cannot serve: a worker failed to load the model from %s", model_dir)
            return USER_ERROR_EXIT_CODE
    return 0

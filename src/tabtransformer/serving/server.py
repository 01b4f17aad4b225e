"""`serve`: gunicorn running the Flask app, configured from SageMaker's environment.

SAGEMAKER_BIND_TO_PORT (8080), SAGEMAKER_MODEL_SERVER_WORKERS (one per CPU),
SAGEMAKER_MODEL_SERVER_TIMEOUT (60 s); the model is read from `model/` under
SAGEMAKER_BASE_DIR (or /opt/ml) once in each worker, and each worker gets an equal share
of the CPU threads so workers do not fight over cores.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from gunicorn.app.base import BaseApplication

from tabtransformer.artifacts import check_servable, load_model
from tabtransformer.errors import UserError
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
        "worker_class": "sync",
        "timeout": positive_int_env("SAGEMAKER_MODEL_SERVER_TIMEOUT", 60),
        "graceful_timeout": 30,
        "keepalive": 5,
        "accesslog": "-",
        "errorlog": "-",
        "loglevel": "info",
        "limit_request_line": 8190,
    }


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
        log.info(
            "worker %d: model loaded from %s (%s, %d features)",
            os.getpid(),
            model_dir,
            predictor.task,
            len(predictor.feature_names),
        )
        return create_app(predictor, workers)


def run_server() -> int:
    """Run gunicorn in the foreground until SIGTERM (graceful shutdown)."""
    model_dir = SageMakerPaths.from_env().model
    # Fail fast with a clear message, but load nothing with torch here: a torch thread pool
    # started before gunicorn forks its workers deadlocks them.
    check_servable(model_dir)
    max_payload_mb()  # checked here, before any worker starts
    Server(server_settings()).run()
    return 0

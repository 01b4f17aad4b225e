"""`serve`: gunicorn running the Flask app, configured from SageMaker's environment.

SAGEMAKER_BIND_TO_PORT (8080), SAGEMAKER_MODEL_SERVER_WORKERS (one per CPU),
SAGEMAKER_MODEL_SERVER_TIMEOUT (60 s), SAGEMAKER_MAX_PAYLOAD_IN_MB, SAGEMAKER_BATCH and
SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT are read and checked once, in the master, before any
worker starts (`ServingSettings`). The model is read from `model/` under SAGEMAKER_BASE_DIR
(or /opt/ml) once in each worker, and each worker gets an equal share of the CPU threads so
workers do not fight over cores. Started as root where the user SERVING_USER exists (the
image), gunicorn binds the port and then runs its workers as that unprivileged user.

Each request's decoding, computing and encoding run in the worker's one native thread, so
that the worker's event loop answers `/ping` (and gunicorn's heartbeat) meanwhile. HTTP
framing errors (a bad chunk size, a body cut short) are the client's: a 400 at once, and
the connection is closed.

Workers are gevent workers: a connection waiting for its request body costs a greenlet,
not a worker, so slow or stalled uploads cannot hold up other requests (a sync worker is
tied to one upload until the timeout). Inference itself runs one request at a time per
worker, as before. A request body must arrive within the request timeout (else 408), and
request headers within the keep-alive time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import signal
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import gevent
import gevent.threadpool
import pandas as pd
import torch
from gunicorn.app.base import BaseApplication
from gunicorn.http.errors import NoMoreData, ParseException
from werkzeug.exceptions import BadRequest, RequestTimeout

from tabtransformer.artifacts import load_model, validate_artifact
from tabtransformer.errors import USER_ERROR_EXIT_CODE
from tabtransformer.paths import SageMakerPaths
from tabtransformer.serving.app import UNREAD_BODY, create_app, drain
from tabtransformer.serving.settings import ServingSettings

log = logging.getLogger(__name__)
SERVING_USER = "model-server"  # created in the image; absent elsewhere (then no change)


def gunicorn_settings(settings: ServingSettings) -> dict[str, Any]:
    """Gunicorn's settings from the checked SageMaker settings."""
    return {
        "bind": f"0.0.0.0:{settings.port}",
        "workers": settings.workers,
        "worker_class": "gevent",
        "worker_connections": 1000,
        "timeout": settings.timeout_s,
        "graceful_timeout": 30,
        "keepalive": 5,
        "accesslog": "-",
        "errorlog": "-",
        "loglevel": "info",
        "limit_request_line": 8190,
        "control_socket_disable": True,  # a shared default path; SageMaker does not use it
        "post_fork": stop_if_asked_while_booting,
        **unprivileged_user(),
    }


def unprivileged_user() -> dict[str, int]:
    """gunicorn's `user` and `group` for SERVING_USER when started as root and the user
    exists (the workers then run as it); nothing otherwise."""
    if os.geteuid() != 0:
        return {}
    try:
        user = pwd.getpwnam(SERVING_USER)
    except KeyError:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid}


def readable_model(model_dir: Path, user: dict[str, int]) -> Path:
    """`model_dir`, or when the workers run as another user and cannot read all of it, a
    private copy they can read (SageMaker unpacks model.tar.gz with the modes it holds)."""
    if not user or all_readable(model_dir):
        return model_dir
    copy = Path(tempfile.mkdtemp(prefix="model-"))
    shutil.copytree(model_dir, copy, dirs_exist_ok=True)
    for path in [copy, *copy.rglob("*")]:
        os.chown(path, user["user"], user["group"], follow_symlinks=False)
    log.info("the model in %s is not readable by %s: serving a copy", model_dir, SERVING_USER)
    return copy


def all_readable(folder: Path) -> bool:
    """Whether every file under `folder` can be read, and every folder entered, by others."""
    return all(
        path.stat().st_mode & (0o005 if path.is_dir() else 0o004)
        for path in [folder, *folder.rglob("*")]
    )


def stop_if_asked_while_booting(arbiter: Any, worker: Any) -> None:
    """Right after the fork: a SIGTERM that reaches a worker before gunicorn installs its
    own handlers (the gevent worker patches for a second or so first) would run the
    master's inherited handler and be lost, and the worker would then hold shutdown for
    the whole graceful timeout. Here it makes the worker stop as soon as it is up. A worker
    about to run as another user also drops root's supplementary groups (gunicorn sets the
    user and group only)."""
    signal.signal(signal.SIGTERM, lambda *_: setattr(worker, "alive", False))
    if os.geteuid() == 0 and worker.cfg.uid != 0:
        os.setgroups([])


class BodyDeadline:
    """WSGI middleware: the whole request body must arrive within `seconds` of the request
    start, else the read raises 408 (a trickling upload cannot hold a connection forever);
    a framing error in the body is a 400. An answer that leaves the body unread (a 413) or
    follows a broken body stream says `Connection: close`, so that no client sends another
    request after it on the same connection; once it is sent, an unread body is drained
    (bounded by the deadline), so that a client still sending reads the answer rather
    than a reset."""

    def __init__(self, app: Callable[..., Iterable[bytes]], seconds: float):
        self.app = app
        self.seconds = seconds

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        stream = DeadlineStream(environ["wsgi.input"], time.monotonic() + self.seconds)
        environ["wsgi.input"] = stream

        def respond(status: str, headers: list, exc_info: Any = None) -> Callable:
            if environ.get(UNREAD_BODY) or stream.broken:
                close_after(start_response)
            return start_response(status, headers, exc_info)

        answer = self.app(environ, respond)
        if environ.get(UNREAD_BODY) and not stream.broken:
            return AfterAnswer(answer, lambda: drain_quietly(stream))
        return answer


def close_after(start_response: Callable) -> None:
    """Make gunicorn answer `Connection: close` and close the connection after this answer
    (its `start_response` is a method of the response it writes)."""
    response = getattr(start_response, "__self__", None)
    if hasattr(response, "force_close"):
        response.force_close()


def drain_quietly(stream: DeadlineStream) -> None:
    """Read and drop the rest of a body; a late or broken rest ends the drain."""
    with contextlib.suppress(Exception):
        drain(stream)


class AfterAnswer:
    """A response iterable that runs `then` once the server has sent it (on close)."""

    def __init__(self, answer: Iterable[bytes], then: Callable[[], None]):
        self.answer = answer
        self.then = then

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.answer)

    def close(self) -> None:
        try:
            if hasattr(self.answer, "close"):
                self.answer.close()
        finally:
            self.then()


class DeadlineStream:
    """A request body stream whose reads stop at a deadline (gevent: the wait yields) and
    whose framing errors are 400s."""

    def __init__(self, stream: IO[bytes], deadline: float):
        self.stream = stream
        self.deadline = deadline
        self.broken = False  # a framing error: the rest of the stream cannot be read

    def _timed(self, read: Callable[..., bytes], *args: Any) -> bytes:
        late = RequestTimeout(
            "The request body did not arrive within the request timeout "
            "(SAGEMAKER_MODEL_SERVER_TIMEOUT)."
        )
        try:
            with gevent.Timeout(max(self.deadline - time.monotonic(), 0.001), late):
                return read(*args)
        except (ParseException, NoMoreData) as e:
            self.broken = True
            raise BadRequest(
                f"The request body is not valid HTTP/1.1 framing ({type(e).__name__}: "
                f"{str(e)[:200]}): send a Content-Length body or a well-formed chunked one."
            ) from None

    def read(self, size: int | None = -1) -> bytes:
        return self._timed(self.stream.read, size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._timed(self.stream.readline, size)

    def __iter__(self):
        return iter(self.readline, b"")


class Server(BaseApplication):
    """Gunicorn application that loads the model in each worker (no preload, no fork
    sharing of torch state)."""

    def __init__(self, settings: ServingSettings, model_dir: Path):
        self.settings = settings
        self.model_dir = model_dir
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_settings(self.settings).items():
            self.cfg.set(key, value)

    def load(self):
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.settings.workers))
        predictor = load_model(self.model_dir)
        # One all-missing row through the whole path: a model that cannot predict stops
        # the worker from booting instead of answering 500 to every request.
        predictor.outputs(pd.DataFrame([[None] * len(predictor.feature_names)]))
        log.info(
            "worker %d: model loaded from %s (%s, %d features)",
            os.getpid(),
            self.model_dir,
            predictor.task,
            len(predictor.feature_names),
        )
        pool = gevent.threadpool.ThreadPool(1)  # one request computes at a time
        app = create_app(predictor, self.settings, offload=lambda compute: pool.apply(compute))
        return BodyDeadline(app, self.settings.timeout_s)


def run_server() -> int:
    """Run gunicorn in the foreground until SIGTERM (graceful shutdown).

    A bad setting or a damaged artifact stops it before any worker starts, with one line
    and exit code 1; so does a worker that fails to load the model (gunicorn's own code for
    that varies)."""
    settings = ServingSettings.from_env()  # checked here, before any worker starts
    model_dir = SageMakerPaths.from_env().model
    # Validate everything, but load nothing with torch here: a torch thread pool started
    # before gunicorn forks its workers deadlocks them.
    validate_artifact(model_dir)
    model_dir = readable_model(model_dir, unprivileged_user())
    # gevent's monkey-patching walks every object once; torch.distributed warns when touched.
    warnings.filterwarnings("ignore", message=".*reduce_op", category=FutureWarning)
    try:
        Server(settings, model_dir).run()
    except SystemExit as stopped:
        if stopped.code not in (None, 0):
            log.error("cannot serve: a worker failed to load the model from %s", model_dir)
            return USER_ERROR_EXIT_CODE
    return 0

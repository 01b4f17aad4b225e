"""The server's settings, read once from SageMaker's environment variables and checked.

The serving master builds `ServingSettings.from_env()` before forking any worker: a bad
value is a UserError naming the variable and what is allowed (one line, exit 1), never a
worker that dies at boot and is restarted forever.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from sagemaker_inference.errors import BaseInferenceToolkitError

from tabtransformer.errors import UserError
from tabtransformer.serving.accept import negotiate

T = TypeVar("T")
DEFAULT_PORT = 8080
DEFAULT_TIMEOUT_S = 60
DEFAULT_MAX_PAYLOAD_MB = 6.0
MAX_PAYLOAD_MB = 1024.0  # SageMaker allows up to 100 MB per batch-transform record
MAX_WORKERS = 1024
MAX_TIMEOUT_S = 3600  # SageMaker's longest invocation timeout (asynchronous inference)
BOOLEANS = {"true": True, "false": False}


@dataclass(frozen=True)
class ServingSettings:
    """What the server reads from its environment, validated."""

    port: int = DEFAULT_PORT
    workers: int = 1
    timeout_s: int = DEFAULT_TIMEOUT_S
    max_payload_mb: float = DEFAULT_MAX_PAYLOAD_MB
    batch: bool = False  # batch transform: one line per record
    default_accept: str = "application/json"

    @property
    def payload_limit(self) -> int:
        """The largest request body, in bytes."""
        return int(self.max_payload_mb * 1024 * 1024)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServingSettings:
        """The settings in `env` (default: os.environ); a bad value is a UserError."""
        env = os.environ if env is None else env
        settings = cls(
            port=_read(env, "SAGEMAKER_BIND_TO_PORT", DEFAULT_PORT, _integer(1, 65535)),
            workers=_read(
                env, "SAGEMAKER_MODEL_SERVER_WORKERS", os.cpu_count() or 1, _integer(1, MAX_WORKERS)
            ),
            timeout_s=_read(
                env, "SAGEMAKER_MODEL_SERVER_TIMEOUT", DEFAULT_TIMEOUT_S, _integer(1, MAX_TIMEOUT_S)
            ),
            max_payload_mb=_read(
                env, "SAGEMAKER_MAX_PAYLOAD_IN_MB", DEFAULT_MAX_PAYLOAD_MB, _megabytes
            ),
            batch=_read(env, "SAGEMAKER_BATCH", False, _boolean),
            default_accept=env.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "application/json"),
        )
        _check_default_accept(settings.default_accept)
        return settings


def _read(env: Mapping[str, str], name: str, default: T, parse: Callable[[str], T]) -> T:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        return parse(raw.strip())
    except ValueError as e:
        raise UserError(f"Environment variable {name}={raw!r}: {e}.") from None


def _integer(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        if not raw.isdigit() or not low <= int(raw) <= high:
            raise ValueError(f"must be a whole number from {low} to {high}")
        return int(raw)

    return parse


def _megabytes(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_PAYLOAD_MB:  # also refuses nan and inf
        raise ValueError(f"must be a positive number of megabytes, at most {MAX_PAYLOAD_MB:g}")
    return value


def _boolean(raw: str) -> bool:
    if raw.lower() not in BOOLEANS:
        raise ValueError("must be true or false")
    return BOOLEANS[raw.lower()]


def _check_default_accept(value: str) -> None:
    try:
        negotiate(value, "application/json")
    except (BaseInferenceToolkitError, UserError) as e:
        reason = e.message if isinstance(e, BaseInferenceToolkitError) else str(e)
        raise UserError(
            f"Environment variable SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT={value!r}: {reason}"
        ) from None

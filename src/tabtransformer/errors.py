"""The error taxonomy: a user's mistake versus a fault of the algorithm.

A `UserError` is something the person running the job can fix (bad data, a bad
hyperparameter, a missing channel). Its message is the whole failure reason and no
traceback is shown. Anything else is an algorithm error: the reason starts with
"AlgorithmError" and carries the traceback, so it can be reported as a bug.
"""

from __future__ import annotations

import traceback
from pathlib import Path

USER_ERROR_EXIT_CODE = 1
ALGORITHM_ERROR_EXIT_CODE = 2
# SageMaker shows the first 1024 characters of output/failure in DescribeTrainingJob.
FAILURE_REASON_LIMIT = 1024


class UserError(Exception):
    """A problem the user can fix; the message says what is wrong and what is allowed."""


def failure_reason(error: BaseException) -> str:
    """The text for `output/failure`: the message for a user error, a traceback otherwise.

    The first FAILURE_REASON_LIMIT characters (what SageMaker shows) always hold the
    reason: a user error's message is cut to fit, an algorithm error's headline comes
    before its traceback and is cut to half of it."""
    if isinstance(error, UserError):
        return _shorten(f"ClientError: {error}", FAILURE_REASON_LIMIT)
    headline = _shorten(
        f"AlgorithmError: {type(error).__name__}: {error}", FAILURE_REASON_LIMIT // 2
    )
    return f"{headline}\n\n{''.join(traceback.format_exception(error))}"


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def write_failure(path: Path, error: BaseException) -> int:
    """Write the failure reason SageMaker shows to `path` and return the process exit code."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(failure_reason(error))
    return USER_ERROR_EXIT_CODE if isinstance(error, UserError) else ALGORITHM_ERROR_EXIT_CODE

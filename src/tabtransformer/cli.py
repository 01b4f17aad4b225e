"""Command line: `tabtransformer train | serve | hyperparameters | metric-definitions`."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from tabtransformer import hyperparameters, metrics
from tabtransformer.errors import USER_ERROR_EXIT_CODE, UserError, failure_reason, write_failure
from tabtransformer.paths import SageMakerPaths

log = logging.getLogger("tabtransformer")
STOPPED_EXIT_CODE = 143  # 128 + SIGTERM, as a process killed by it would report


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def train() -> int:
    """The training container entry point; returns the process exit code."""
    from tabtransformer import job  # imports torch: keep `--help` fast
    from tabtransformer.checkpoints import Stopped

    setup_logging()
    paths = SageMakerPaths.from_env()
    try:
        job.run(paths)
    except Stopped as stopped:
        log.warning("%s; a job restarted with the same checkpoints resumes there", stopped)
        return STOPPED_EXIT_CODE
    except Exception as error:
        code = write_failure(paths.failure, error)
        log.error("training failed (exit code %d): %s", code, failure_reason(error))
        return code
    return 0


def serve() -> int:
    """The inference container entry point: gunicorn serving the Flask app."""
    from tabtransformer.serving.server import run_server

    setup_logging()
    try:
        return run_server()
    except UserError as error:
        log.error("cannot serve: %s", error)
        return USER_ERROR_EXIT_CODE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tabtransformer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="run a training job over $SAGEMAKER_BASE_DIR (or /opt/ml)")
    sub.add_parser("serve", help="serve model/ at /invocations with gunicorn")
    hp = sub.add_parser("hyperparameters", help="print the hyperparameter defaults")
    hp.add_argument("--markdown", action="store_true", help="print the README table")
    md = sub.add_parser("metric-definitions", help="print SageMaker MetricDefinitions")
    md.add_argument("--task", choices=("binary", "multiclass", "regression"))
    args = parser.parse_args(argv)
    if args.command == "train":
        return train()
    if args.command == "serve":
        return serve()
    if args.command == "hyperparameters":
        if args.markdown:
            print(hyperparameters.markdown_table())
        else:
            print(json.dumps({k: str(v) for k, v in hyperparameters.defaults().items()}, indent=2))
        return 0
    print(json.dumps(metrics.metric_definitions(args.task), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

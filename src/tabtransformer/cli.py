"""Command line: `tabtransformer train | serve | hyperparameters | metric-definitions`."""

# Nothing heavy at module level (torch, numpy, pandas, pyarrow, flask, gunicorn): `--help`,
# `hyperparameters` and `metric-definitions` must answer at once; each subcommand imports
# what it needs.

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tabtransformer.errors import USER_ERROR_EXIT_CODE, UserError, failure_reason, write_failure
from tabtransformer.paths import SageMakerPaths

if TYPE_CHECKING:
    from tabtransformer.distributed import Cluster

log = logging.getLogger("tabtransformer")
PROCESS_STARTED = time.monotonic()  # this module is imported first: the start-up's start
STOPPED_EXIT_CODE = 143  # 128 + SIGTERM, as a process killed by it would report


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def train() -> int:
    """The training container entry point; returns the process exit code.

    One process per GPU (or one on a CPU host) on every host of resourceconfig.json.
    """
    from tabtransformer.distributed import Cluster  # imports torch: keep `--help` fast

    setup_logging()
    paths = SageMakerPaths.from_env()
    try:
        cluster = Cluster.from_resource_config(paths.resource_config)
    except (ValueError, KeyError) as error:  # malformed resourceconfig.json or variable
        reason = UserError(
            f"Cannot read the cluster layout ({paths.resource_config}, "
            f"PROCESSES_PER_HOST): {error!r}"
        )
        log.error("%s", failure_reason(reason))
        return write_failure(paths.failure, reason)
    # The host's encoded tables: written once, memory-mapped by every process of the host.
    with tempfile.TemporaryDirectory(prefix="tabtransformer-", dir=scratch_root()) as scratch:
        return train_host(paths, cluster, Path(scratch))


def scratch_root() -> str | None:
    """Where the host's encoded tables go: TABTRANSFORMER_SCRATCH, else the temp folder."""
    return os.environ.get("TABTRANSFORMER_SCRATCH") or None


def train_host(paths: SageMakerPaths, cluster: Cluster, scratch: Path) -> int:
    """Run this host's training processes: this process is the first (local rank 0), the
    others are forked from it (no idle parent holds memory while they train)."""
    if cluster.processes_per_host == 1:
        return train_process(paths, cluster, 0, scratch)
    # Fork after the imports and before any torch computation (no thread pool, no CUDA
    # context yet): the processes share the imported modules' pages instead of each
    # importing torch again (about 270 MB per process). gc.freeze keeps the collector
    # from touching, and so copying, those pages.
    import multiprocessing

    from tabtransformer import job  # noqa: F401  (imports torch)

    gc.freeze()
    context = multiprocessing.get_context("fork")
    others = [
        context.Process(target=_forked_train, args=(cluster, rank, scratch))
        for rank in range(1, cluster.processes_per_host)
    ]
    for process in others:
        process.start()
    # SageMaker signals this process only: pass SIGTERM on, so every rank checkpoints (once
    # training runs, this process's own SIGTERM flag replaces this handler; the ranks agree
    # on stopping through the process group).
    signal.signal(signal.SIGTERM, lambda *_: [p.terminate() for p in others])
    code = train_process(paths, cluster, 0, scratch)
    for process in others:
        process.join()
    codes = [code, *(p.exitcode or 0 for p in others)]
    return next((c for c in codes if c), 0)


def _forked_train(cluster: Cluster, local_rank: int, scratch: Path) -> None:
    setup_logging()
    sys.exit(train_process(SageMakerPaths.from_env(), cluster, local_rank, scratch))


def train_process(
    paths: SageMakerPaths, cluster: Cluster, local_rank: int, scratch: Path | None = None
) -> int:
    """Train as one process of the cluster; the first process of each host reports.
    `scratch`: the host's folder for encoded tables (None: a temporary one)."""
    import torch.distributed as dist

    from tabtransformer import job  # imports torch: keep `--help` fast
    from tabtransformer.checkpoints import Stopped
    from tabtransformer.hardware import configure_threads

    world = cluster.world(local_rank)
    if local_rank != 0:  # each host's first process logs (its own log stream)
        logging.getLogger().setLevel(logging.WARNING)
    configure_threads(cluster.processes_per_host)
    try:
        if world.distributed:
            cluster.init_process_group(world)
            log.info("process %d of %d (hosts %s)", world.rank, world.size, cluster.hosts)
        job.run(paths, world, scratch, PROCESS_STARTED)
    except Stopped as stopped:
        log.warning("%s; a job restarted with the same checkpoints resumes there", stopped)
        return STOPPED_EXIT_CODE
    except Exception as error:
        if local_rank != 0:
            return 1
        code = write_failure(paths.failure, error)
        log.error("training failed (exit code %d): %s", code, failure_reason(error))
        return code
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def serve() -> int:
    """The inference container entry point: gunicorn serving the Flask app. The server's
    settings are checked first, before torch is imported."""
    from tabtransformer.serving.settings import ServingSettings

    setup_logging()
    try:
        ServingSettings.from_env()
        from tabtransformer.serving.server import run_server

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
    hp.add_argument(
        "--markdown", action="store_true", help="print the table of docs/hyperparameters.md"
    )
    md = sub.add_parser("metric-definitions", help="print SageMaker MetricDefinitions")
    md.add_argument("--task", choices=("binary", "multiclass", "regression"))
    args = parser.parse_args(argv)
    if args.command == "train":
        return train()
    if args.command == "serve":
        return serve()
    if args.command == "hyperparameters":
        from tabtransformer import hyperparameters

        if args.markdown:
            print(hyperparameters.markdown_table())
        else:
            print(json.dumps({k: str(v) for k, v in hyperparameters.defaults().items()}, indent=2))
        return 0
    from tabtransformer import metrics

    print(json.dumps(metrics.metric_definitions(args.task), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

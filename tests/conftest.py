"""Shared fixtures: small generated tables and SageMaker `/opt/ml` trees to run jobs over.

The harness itself is `tabtransformer.local` (LocalJob, LocalServer): `Job` is a LocalJob
with fast hyperparameters, `Server` is LocalServer.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tabtransformer.local import SERVE_ENTRY, TRAIN_ENTRY, LocalJob, LocalServer, free_port

REPO = Path(__file__).resolve().parents[1]
# Under pytest-xdist (make test), each worker's jobs and servers take their share of the
# cores: torch's OpenMP threads spin while they wait, and two workers' jobs each using
# every core slow each other several-fold. Set before any test module imports torch.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // WORKERS))
# cv_folds=1: one model per job (the few-label default cross-fits 5; test_cross_fitting.py).
FAST = {"n_epochs": "4", "n_blocks": "1", "patience": "3", "batch_size": "64", "cv_folds": "1"}
# The tests run the very files the image runs, from this checkout (an editable install).
assert TRAIN_ENTRY == REPO / "docker" / "train" and SERVE_ENTRY == REPO / "docker" / "serve", (
    f"tabtransformer is not imported from this checkout's src/: {TRAIN_ENTRY}"
)


def make_table(task: str = "binary", n: int = 240, seed: int = 0) -> pd.DataFrame:
    """A small table whose target depends on both kinds of column; target first."""
    rng = np.random.default_rng(seed)
    color = rng.choice(["red", "green", "blue"], n)
    shape = rng.choice(["circle", "square"], n)
    size = rng.normal(10, 3, n).round(2)
    weight = rng.exponential(5, n).round(2)
    signal = (color == "red") * 2.0 + (shape == "square") + (size - 10) / 3 + rng.normal(0, 0.5, n)
    if task == "binary":
        target = np.where(signal > 1.0, "yes", "no")
    elif task == "multiclass":
        target = np.digitize(signal, [0.3, 1.6]).astype(int)  # integer classes 0, 1, 2
    else:
        target = (signal * 10 + 50).round(3)
    frame = pd.DataFrame(
        {"label": target, "color": color, "size": size, "shape": shape, "weight": weight}
    )
    frame.loc[rng.choice(n, 5, replace=False), "weight"] = np.nan  # missing numbers
    return frame


class Job(LocalJob):
    """A LocalJob with FAST hyperparameters, a 300 s limit on `train`, and the tree's
    `config` and `data` folders."""

    def __init__(self, base: Path):
        super().__init__(base, FAST)
        self.config = self.paths.config
        self.data = self.paths.data

    def train(
        self, timeout: float | None = 300, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        return super().train(timeout, env)


@pytest.fixture
def job(tmp_path: Path) -> Job:
    return Job(tmp_path / "opt_ml")


Server = LocalServer
__all__ = [
    "FAST",
    "REPO",
    "SERVE_ENTRY",
    "TRAIN_ENTRY",
    "Job",
    "Server",
    "free_port",
    "make_table",
]

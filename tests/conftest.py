"""Shared fixtures: small generated tables and SageMaker `/opt/ml` trees to run jobs over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from local_server import LocalServer, free_port

REPO = Path(__file__).resolve().parents[1]
TRAIN_ENTRY = REPO / "docker" / "train"
FAST = {"n_epochs": "4", "n_blocks": "1", "patience": "3", "batch_size": "64"}


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


class Job:
    """An `/opt/ml` tree under `base`, and the real `train` entry point run over it."""

    def __init__(self, base: Path):
        self.base = base
        self.config = base / "input" / "config"
        self.data = base / "input" / "data"
        self.config.mkdir(parents=True)
        self.hyperparameters(FAST)

    def hyperparameters(self, values: dict) -> None:
        (self.config / "hyperparameters.json").write_text(json.dumps(values))

    def channel(
        self,
        name: str,
        frame: pd.DataFrame,
        header: bool = False,
        subfolder: str = "",
        filename: str = "data.csv",
        **to_csv,
    ) -> Path:
        folder = self.data / name / subfolder
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / filename
        if filename.endswith(".parquet"):
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, header=header, index=False, **to_csv)
        return path

    def train(self, timeout: int = 300) -> subprocess.CompletedProcess:
        env = {**os.environ, "SAGEMAKER_BASE_DIR": str(self.base)}
        return subprocess.run(
            [sys.executable, str(TRAIN_ENTRY)],
            env=env,
            timeout=timeout,
            capture_output=True,
            text=True,
        )

    @property
    def model(self) -> Path:
        return self.base / "model"

    @property
    def failure(self) -> str:
        return (self.base / "output" / "failure").read_text()


@pytest.fixture
def job(tmp_path: Path) -> Job:
    return Job(tmp_path / "opt_ml")


Server = LocalServer
__all__ = ["FAST", "REPO", "TRAIN_ENTRY", "Job", "Server", "free_port", "make_table"]

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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The real `serve` entry point (gunicorn) on a loopback port, over an `/opt/ml` tree."""

    def __init__(self, base: Path, **env: str):
        import time

        import requests

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {
            **os.environ,
            "SAGEMAKER_BASE_DIR": str(base),
            "SAGEMAKER_BIND_TO_PORT": str(self.port),
            "SAGEMAKER_MODEL_SERVER_WORKERS": "2",
            **env,
        }
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "docker" / "serve")],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stdout.read()}")
            try:
                if requests.get(self.url + "/ping", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not answer /ping within 60 s")

    def post(self, body, content_type="text/csv", accept=None, **headers):
        import requests

        headers = {"Content-Type": content_type, **headers}
        if accept is not None:
            headers["Accept"] = accept
        data = body.encode() if isinstance(body, str) else body
        return requests.post(self.url + "/invocations", data=data, headers=headers, timeout=60)

    def stop(self) -> str:
        self.process.terminate()
        output, _ = self.process.communicate(timeout=30)
        return output

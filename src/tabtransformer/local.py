"""Run the container's entry points on this machine, over an `/opt/ml` tree of your own.

`LocalJob`: an `/opt/ml` tree under any folder (hyperparameters, channels written from
DataFrames) and the real `train` entry point run over it. `LocalServer`: the real `serve`
entry point (gunicorn) over such a tree on a free loopback port. Both run the entry point
as a subprocess with SAGEMAKER_BASE_DIR set to the tree:

- imported from a checkout (`src/tabtransformer`, e.g. `pip install -e .`): the checkout's
  `docker/train` and `docker/serve`, the very files the image runs;
- installed without the checkout: `python -m tabtransformer train | serve`, which calls
  the same `cli.main` as those files.

`read_rows` and `append_row`: the results CSV of a benchmark, one row per finished run
appended at once, so that a rerun can skip what the file holds.

    job = LocalJob(Path("opt_ml"), {"n_epochs": "5"})
    job.channel("training", frame)  # no header, target first (JumpStart's layout)
    result = job.train()
    with LocalServer(job.base) as server:
        print(server.post(frame.iloc[:2, 1:].to_csv(header=False, index=False)).json())

Imports nothing heavy: this module does not import torch or pandas itself.
"""

from __future__ import annotations

import csv
import ctypes.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tabtransformer.paths import SageMakerPaths

if TYPE_CHECKING:
    import pandas as pd


def _checkout_entry(command: str) -> Path | None:
    """`docker/<command>` of the checkout this package is imported from, if it is one."""
    package = Path(__file__).resolve().parent
    script = package.parents[1] / "docker" / command
    return script if package.parent.name == "src" and script.is_file() else None


TRAIN_ENTRY = _checkout_entry("train")  # None: installed without the checkout
SERVE_ENTRY = _checkout_entry("serve")


def entry_point(command: str) -> list[str]:
    """The command line of the `train` or `serve` entry point (see the module's text)."""
    script = {"train": TRAIN_ENTRY, "serve": SERVE_ENTRY}[command]
    if script is not None:
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "tabtransformer", command]


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The image runs its entry points with tcmalloc preloaded (Dockerfile): glibc's malloc maps
# and unmaps the large attention temporaries of a wide table at every step (a training step
# at 74 tokens takes 1.8x as long, at 29 tokens 1.3x). Local runs do the same when this
# machine has the library (Debian: libtcmalloc-minimal4) and LD_PRELOAD is not set.
TCMALLOC = "tcmalloc_minimal"
TCMALLOC_QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}  # no "large alloc"


def allocator() -> dict[str, str]:
    """The variables that preload tcmalloc as the image does (empty: not found, or
    LD_PRELOAD already set)."""
    if "LD_PRELOAD" in os.environ:
        return {}
    library = ctypes.util.find_library(TCMALLOC)
    return {"LD_PRELOAD": library, **TCMALLOC_QUIET} if library else {}


def environment(base: Path, **env: str) -> dict[str, str]:
    """This process's environment with SAGEMAKER_BASE_DIR=`base`, tcmalloc preloaded as in
    the image (`allocator`), and `env` over it."""
    return {**os.environ, **allocator(), "SAGEMAKER_BASE_DIR": str(base), **env}


class LocalJob:
    """An `/opt/ml` tree under `base` and the real `train` entry point run over it."""

    def __init__(self, base: Path, hyperparameters: Mapping[str, object] | None = None):
        self.paths = SageMakerPaths(Path(base))
        self.paths.config.mkdir(parents=True, exist_ok=True)
        self.hyperparameters(hyperparameters or {})

    @property
    def base(self) -> Path:
        return self.paths.base

    def hyperparameters(self, values: Mapping[str, object]) -> None:
        """Write `input/config/hyperparameters.json` (SageMaker passes strings)."""
        self.paths.hyperparameters.write_text(json.dumps(dict(values)))

    def channel(
        self,
        name: str,
        frame: pd.DataFrame,
        header: bool = False,
        subfolder: str = "",
        filename: str = "data.csv",
        **to_csv: Any,
    ) -> Path:
        """Write `frame` into channel `name`: Parquet if `filename` ends in .parquet, else
        CSV (`header`, `to_csv`: DataFrame.to_csv's options). Returns the file."""
        folder = self.paths.channel(name) / subfolder
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / filename
        if filename.endswith(".parquet"):
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, header=header, index=False, **to_csv)
        return path

    def start(self, env: Mapping[str, str] | None = None, **popen: Any) -> subprocess.Popen:
        """Start `train` over this tree; `env`: extra variables, `popen`: Popen's options
        (output goes to this process's unless `stdout` / `stderr` say otherwise)."""
        return subprocess.Popen(
            entry_point("train"), env=environment(self.base, **(env or {})), **popen
        )

    def train(
        self, timeout: float | None = None, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """Run `train` over this tree to the end; its output is captured as text."""
        return subprocess.run(
            entry_point("train"),
            env=environment(self.base, **(env or {})),
            timeout=timeout,
            capture_output=True,
            text=True,
        )

    def timed_train(self) -> tuple[float, dict[str, float]]:
        """Run `train` to the end (benchmarks): its wall-clock seconds and the job's stage
        times (`output/data/timings.json`); a failed job raises RuntimeError with the end
        of its output."""
        started = time.perf_counter()
        result = self.train()
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"train failed ({result.returncode}): {result.stderr[-3000:]}")
        return seconds, json.loads((self.paths.output_data / "timings.json").read_text())

    def train_in_process(self) -> None:
        """Run the job in this process (`tabtransformer.job.run`, which imports torch):
        failures are exceptions, and no failure file is needed to read them."""
        from tabtransformer import job

        job.run(self.paths)

    @property
    def model(self) -> Path:
        return self.paths.model

    @property
    def metrics(self) -> dict[str, Any]:
        """The trained model's `metrics.json`."""
        return json.loads((self.paths.model / "metrics.json").read_text())

    @property
    def failure(self) -> str | None:
        """The failure file's text (why the job failed); None if there is none."""
        path = self.paths.failure
        return path.read_text() if path.is_file() else None


@dataclass
class Reply:
    """An HTTP answer: status, body text and headers."""

    status_code: int
    text: str
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.text)


class LocalServer:
    """The real `serve` entry point over the `/opt/ml` tree `base`, on a free port of
    127.0.0.1; `env`: SAGEMAKER_* settings (2 workers unless SAGEMAKER_MODEL_SERVER_WORKERS
    says otherwise). Started when constructed, once /ping answers 200."""

    START_TIMEOUT_S = 60.0

    def __init__(self, base: Path, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = {"SAGEMAKER_BIND_TO_PORT": str(self.port), "SAGEMAKER_MODEL_SERVER_WORKERS": "2"}
        # A file, not a pipe: nobody reads a pipe while serving, and a full one blocks workers.
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in stop)
        self._final_output: str | None = None
        self.process = subprocess.Popen(
            entry_point("serve"),
            env=environment(Path(base), **{**settings, **env}),
            text=True,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait_for_ping(self.START_TIMEOUT_S)

    def _wait_for_ping(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/ping", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:  # refused, reset or timed out (URLError is an OSError)
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not answer /ping within {timeout:g} s")

    def post(
        self,
        body: str | bytes,
        content_type: str = "text/csv",
        accept: str | None = None,
        path: str = "/invocations",
    ) -> Reply:
        """POST `body`; 4xx and 5xx come back as a Reply, not an exception."""
        headers = {"Content-Type": content_type}
        if accept is not None:
            headers["Accept"] = accept
        data = body.encode() if isinstance(body, str) else body
        request = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return Reply(response.status, response.read().decode(), dict(response.headers))
        except urllib.error.HTTPError as e:
            return Reply(e.code, e.read().decode(), dict(e.headers))

    def stop(self) -> str:
        """SIGTERM (gunicorn shuts down gracefully); returns the server's output."""
        if self._final_output is None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self._final_output = self.output()
            self.log.close()
        return self._final_output

    def output(self) -> str:
        """What the server has printed so far (all of it, once stopped)."""
        if self._final_output is not None:
            return self._final_output
        self.log.seek(0)
        return self.log.read()

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a results CSV (none if the file does not exist yet)."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def append_row(path: Path, row: Mapping[str, object], fields: Sequence[str]) -> None:
    """Append one row to a results CSV at once, writing the header `fields` first if new."""
    new = not path.is_file()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        if new:
            writer.writeheader()
        writer.writerow(row)

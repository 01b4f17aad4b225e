"""Run the real `serve` entry point (docker/serve of this checkout) on a loopback port.

Test tooling, also used by scripts/demo.py and scripts/load_test.py; not part of the
installed package.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVE_ENTRY = Path(__file__).resolve().parents[1] / "docker" / "serve"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Reply:
    """An HTTP answer: status, body text and headers."""

    status_code: int
    text: str
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.text)


class LocalServer:
    """`docker/serve` (gunicorn) over the `/opt/ml` tree `base`, on 127.0.0.1."""

    def __init__(self, base: Path, entry: Path = SERVE_ENTRY, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {
            **os.environ,
            "SAGEMAKER_BASE_DIR": str(base),
            "SAGEMAKER_BIND_TO_PORT": str(self.port),
            "SAGEMAKER_MODEL_SERVER_WORKERS": "2",
            **env,
        }
        # A file, not a pipe: nobody reads a pipe while serving, and a full one blocks workers.
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, str(entry)],
            env=full_env,
            text=True,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait_for_ping(timeout=60)

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
        self.process.terminate()
        self.process.wait(timeout=30)
        output = self.output()
        self.log.close()
        return output

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

"""The CLI's quick commands import nothing heavy: `--help`, `hyperparameters` and
`metric-definitions` answer without importing torch (each run in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Runs the CLI's main with the given arguments, then prints which heavy modules it imported.
PROBE = """
import contextlib, io, json, sys
from tabtransformer.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(sys.argv[1:])
    except SystemExit as stopped:
        assert stopped.code == 0, stopped.code
heavy = ("torch", "pandas", "numpy", "pyarrow", "flask", "gunicorn")
print(json.dumps([name for name in heavy if name in sys.modules]))
"""


def imported_by(*arguments: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    "arguments",
    [("--help",), ("train", "--help"), ("hyperparameters",), ("hyperparameters", "--markdown")],
)
def test_help_and_hyperparameters_import_nothing_heavy(arguments):
    assert imported_by(*arguments) == []


def test_metric_definitions_do_not_import_torch():
    assert "torch" not in imported_by("metric-definitions", "--task", "binary")


def test_python_m_tabtransformer_answers_help():
    done = subprocess.run(
        [sys.executable, "-m", "tabtransformer", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "metric-definitions" in done.stdout, done.stderr


def test_the_package_api_is_imported_on_first_use():
    import tabtransformer
    from tabtransformer import Predictor, load_model
    from tabtransformer.artifacts import load_model as artifacts_load_model
    from tabtransformer.inference import Predictor as inference_predictor

    assert load_model is artifacts_load_model and Predictor is inference_predictor
    assert set(tabtransformer.__all__) <= set(dir(tabtransformer))
    with pytest.raises(AttributeError):
        tabtransformer.no_such_name  # noqa: B018


def test_without_a_checkout_the_harness_runs_python_m_tabtransformer(tmp_path, monkeypatch):
    """An installed package has no docker/serve: LocalServer runs `python -m tabtransformer
    serve`, which reaches the same entry point (here: refusing a folder without a model)."""
    from tabtransformer import local

    monkeypatch.setattr(local, "SERVE_ENTRY", None)
    assert local.entry_point("serve") == [sys.executable, "-m", "tabtransformer", "serve"]
    (tmp_path / "model").mkdir()
    with pytest.raises(RuntimeError, match="not a TabTransformer model"):
        local.LocalServer(tmp_path)

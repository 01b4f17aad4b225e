"""scripts/gpu_check.sh, the GPU path's one command, in its CPU smoke mode (so that the
script a GPU machine runs cannot rot)."""

from __future__ import annotations

import subprocess

import pytest
from conftest import REPO


@pytest.mark.slow
def test_the_gpu_check_runs_every_stage_in_smoke_mode(tmp_path):
    result = subprocess.run(
        [str(REPO / "scripts" / "gpu_check.sh"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = (tmp_path / "gpu_check.md").read_text()
    for section in ("Environment", "Training speed", "real `train`", "Accuracy"):
        assert f"## {section}" in report or section in report
    assert "| this project |" in report
    assert "process group: gloo (2 processes)" in report
    assert "test AUC on cpu" in report  # attrition, in smoke mode

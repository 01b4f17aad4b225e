"""The accuracy benchmark's table: results files merged without double counting, the gap
to the better GBDT, and a summary that trains nothing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from conftest import REPO

SCRIPT = REPO / "scripts" / "benchmark_accuracy.py"
spec = importlib.util.spec_from_file_location("benchmark_accuracy", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def write(path: Path, rows: list[tuple[str, int, str, float]]) -> Path:
    for table, seed, model, value in rows:
        task = "regression" if table == "ames" else "binary"
        bench.append_result(
            path,
            {
                "table": table,
                "seed": seed,
                "model": model,
                "task": task,
                "metric": bench.METRIC[task],
                "score": value,
                "fit_seconds": 10.0,
                "rows": 100,
            },
        )
    return path


def test_other_results_fill_only_what_the_own_file_lacks(tmp_path: Path):
    own = write(tmp_path / "own.csv", [("taxi", 0, "lightgbm", 0.6)])
    other = write(tmp_path / "gpu.csv", [("taxi", 0, "lightgbm", 0.9), ("taxi", 0, "tabm_d", 0.7)])
    merged = bench.merge_results(bench.read_results(own), [other])
    assert sorted((r["model"], float(r["score"])) for r in merged) == [
        ("lightgbm", 0.6),
        ("tabm_d", 0.7),
    ]


def test_summary_prints_means_gap_and_trains_nothing(tmp_path: Path):
    rows = [
        ("taxi", s, m, v + s / 100)
        for s in (0, 1)
        for m, v in [("tt:x", 0.62), ("lightgbm", 0.60), ("catboost", 0.64)]
    ]
    rows += [("ames", 0, "tt:x", 0.90), ("ames", 0, "lightgbm", 0.91), ("ames", 0, "catboost", 0.8)]
    results = write(tmp_path / "r.csv", rows)
    before = results.read_bytes()
    out = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--summary",
            "--results",
            str(results),
            "--tables",
            "taxi,ames,email",
            "--seeds",
            "0,1",
            "--models",
            "tt:x,lightgbm,catboost,other",
            "--gap",
            "tt:x",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert results.read_bytes() == before  # nothing trained, nothing appended
    lines = {line.split(" | ")[0]: line for line in out.splitlines() if line.startswith("| ")}
    assert "0.6250 ± 0.0050 (10 s, n=2)" in lines["| taxi"]
    assert lines["| taxi"].rstrip(" |").endswith("−0.0200")  # 0.625 − CatBoost's 0.645
    assert lines["| ames"].rstrip(" |").endswith("−0.0100")  # 0.90 − LightGBM's 0.91
    assert "| email" not in lines  # no rows, no line

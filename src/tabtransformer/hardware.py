"""Using the machine well: CPU threads, optional torch.compile, where the encoded table lives.

CPU threads: PyTorch starts one thread per core it sees, which oversubscribes a host that
runs several training processes (or a container with a CPU quota): OpenMP threads then spin
waiting for each other. Each training process uses the cores it may run on (its CPU
affinity, capped by a cgroup CPU quota) divided by the processes per host, at least one;
an explicit OMP_NUM_THREADS wins.

torch.compile (hyperparameter `compile`) is lazy: a failure shows at the first forward pass.
`compiled` returns a callable that falls back to the eager module, with a warning, when
compiling fails then (no C++ compiler, an unsupported operation) or at once.

On a GPU the whole encoded table is copied to the device when it fits in half of the free
memory; otherwise it stays in host memory and each batch is gathered there, pinned and
copied without blocking.

Precision: training runs under bf16 autocast on GPUs that support it, and on CPUs with
native bf16 instructions (AVX512-BF16 or AMX) for networks of at least
CPU_BF16_MIN_TOKENS tokens, where it trains up to 1.5 times faster (1.4 times at 85
tokens); with fewer tokens it is no faster as a whole, so only the prediction head trains
in bf16 there (`training_head_dtype`); without the instructions bf16 is emulated and
slower. Predictions (served, and fine-tuning's validation) stay float32 on a CPU.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from tabtransformer.inference import prediction_autocast

if TYPE_CHECKING:
    from tabtransformer.inference import Encoded

    Rows = Encoded  # or any table with len(), rows(index) -> Encoded and to(device)

log = logging.getLogger(__name__)
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max ..."
DEVICE_SHARE = 0.5  # of the free GPU memory the encoded table may take
CPU_BF16_MIN_TOKENS = 40  # below it bf16 trains no faster on a CPU (docs/benchmarks.md)


def available_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The cores this process may use: its affinity mask, capped by a cgroup CPU quota."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:  # pragma: no cover - macOS
        cores = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota to honour
    return max(1, cores)


def configure_threads(processes_per_host: int, cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """Set torch's intra-op threads to this process's share of the cores (OMP_NUM_THREADS,
    when set, wins); returns the count."""
    if os.environ.get("OMP_NUM_THREADS"):
        threads = torch.get_num_threads()  # torch already read it
        source = "OMP_NUM_THREADS"
    else:
        cores = available_cores(cpu_max)
        threads = max(1, cores // max(1, processes_per_host))
        torch.set_num_threads(threads)
        source = f"{cores} core(s) / {processes_per_host} process(es) per host"
    log.info("CPU threads per process: %d (%s)", threads, source)
    return threads


class Compiled:
    """Calls a torch.compile'd module; on the first failure, warns and calls it eagerly."""

    def __init__(self, module: nn.Module, what: str):
        self.module, self.what = module, what
        self.compiled: Callable | None = None
        self.ran = False  # the compiled call has run once (and compiled)
        try:
            self.compiled = torch.compile(module)
        except Exception as error:  # unsupported platform or Python: torch raises many kinds
            self._give_up(error)

    def _give_up(self, error: BaseException) -> None:
        self.compiled = None
        log.warning(
            "compile=true: torch.compile of the %s failed (%s: %s); running it eagerly "
            "(the same results, without the speed-up)",
            self.what,
            type(error).__name__,
            str(error).strip().splitlines()[0][:300] if str(error).strip() else "",
        )

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            first = not self.ran
            started = time.perf_counter()
            try:
                out = self.compiled(*args, **kwargs)
            except Exception as error:  # inductor and dynamo raise many kinds
                self._give_up(error)
            else:
                if first:
                    self.ran = True
                    log.info(
                        "compile=true: torch.compile of the %s compiled (first call %.1f s)",
                        self.what,
                        time.perf_counter() - started,
                    )
                return out
        return self.module(*args, **kwargs)


@functools.cache
def native_cpu_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX tiles)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without the checks: assume not
        return False


def cpu_trains_in_bf16(device: torch.device, n_tokens: int) -> bool:
    """Whether training on this CPU runs under bf16 autocast (see Precision above)."""
    return device.type == "cpu" and n_tokens >= CPU_BF16_MIN_TOKENS and native_cpu_bf16()


def training_head_dtype(device: torch.device, n_tokens: int) -> torch.dtype | None:
    """The dtype the prediction head trains in: bf16 on CPUs with native bf16 where the
    rest of the network trains in float32 (fewer than CPU_BF16_MIN_TOKENS tokens), else
    None (the forward pass's own). Its first layer (k members over every token's
    embedding) is a step's largest matmul; in bf16 it trains 1.5-1.8 times as fast."""
    if device.type == "cpu" and n_tokens < CPU_BF16_MIN_TOKENS and native_cpu_bf16():
        return torch.bfloat16
    return None


def training_autocast(device: torch.device, n_tokens: int) -> contextlib.AbstractContextManager:
    """What a training forward pass runs under: as a prediction, and bf16 autocast on CPUs
    with native bf16 for networks of at least CPU_BF16_MIN_TOKENS tokens."""
    if cpu_trains_in_bf16(device, n_tokens):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return prediction_autocast(device)


def compiled(module: nn.Module, enabled: bool, what: str = "model") -> Callable:
    """`module` itself, or (enabled) a torch.compile'd call that falls back to it."""
    return Compiled(module, what) if enabled else module


def table_bytes(data: Rows) -> int:
    """The size of `data` as batches hold it (codes widened to int64), from one row."""
    if not len(data):
        return 0
    row = data.rows(slice(0, 1))
    parts = (row.codes, row.numbers, row.target)
    return len(data) * sum(t.nbytes for t in parts if t is not None)


def fits_on_device(nbytes: int, device: torch.device) -> bool:
    """Whether `nbytes` fit in DEVICE_SHARE of a GPU's free memory."""
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= DEVICE_SHARE * free


def place(data: Rows, device: torch.device) -> tuple[Rows, torch.device]:
    """Where batches of `data` are gathered: on a GPU, the whole table copied there when it
    fits; otherwise (a CPU, or a table too big) where it is, in host memory. Returns the
    table and the device its batches are gathered on (the row indexes belong there)."""
    if device.type != "cuda":
        return data, torch.device("cpu")
    nbytes = table_bytes(data)
    if fits_on_device(nbytes, device):
        return data.to(device), device
    log.info(
        "the encoded table (%.1f GB) does not fit on %s: batches are gathered in host "
        "memory and copied from pinned memory without blocking",
        nbytes / 1e9,
        device,
    )
    return data, torch.device("cpu")


def gather(data: Rows, index: torch.Tensor, device: torch.device) -> Encoded:
    """The rows `index` of `data` on `device`: gathered where the table is, then, from
    host memory to a GPU, pinned and copied without blocking."""
    part = data.rows(index)
    if part.codes.device.type == "cpu" and device.type == "cuda":
        return part.pin_memory().to(device, non_blocking=True)
    return part.to(device)

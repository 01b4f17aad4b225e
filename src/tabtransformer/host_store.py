"""Encoded tables on local disk, one copy per host, memory-mapped by every process.

The first process of a host (local rank 0) encodes a channel straight into `.npy` files in
the job's scratch folder (`HostStore.create` gives a writable memmap); after the processes
have met (a collective of the process group), every process of the host opens them
read-only (`np.load(mmap_mode="r")`), so the operating system keeps one copy in its page
cache for all of them. `MappedRows` is a view of such arrays: batches are gathered by
row index and widened to int64 codes only then.

Categorical codes are stored in the smallest integer type their cardinality fits (uint8,
int16, int32), numbers as float32, labels as the target encoder gives them.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from tabtransformer.inference import Encoded


def code_dtype(cardinalities: list[int]) -> np.dtype:
    """The smallest integer type that holds every code (codes are below the cardinality)."""
    largest = max(cardinalities, default=1)
    for dtype in (np.uint8, np.int16, np.int32):
        if largest - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


@dataclass(frozen=True)
class HostStore:
    """A folder of `.npy` arrays shared by the processes of one host."""

    directory: Path

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.npy"

    def create(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.memmap:
        """A new writable array backed by `<name>.npy` (first process of the host only)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        return np.lib.format.open_memmap(self.path(name), mode="w+", dtype=dtype, shape=shape)

    def save(self, name: str, array: np.ndarray) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        np.save(self.path(name), array)

    def load(self, name: str) -> np.ndarray:
        """The array, memory-mapped read-only (an empty array is read, not mapped)."""
        return np.load(self.path(name), mmap_mode="r")


@dataclass(frozen=True)
class MappedRows:
    """Rows of compact arrays (often memory-mapped), used like `Encoded`: `rows(index)`
    gathers a batch as int64 codes, float32 numbers and labels; `index` selects the view's
    rows of the arrays (None: all of them, in order)."""

    codes_array: np.ndarray  # (N, m) uint8 / int16 / int32
    numbers_array: np.ndarray  # (N, c) float32
    target_array: np.ndarray | None = None  # (N,) labels, row for row
    index: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.index) if self.index is not None else self.codes_array.shape[0]

    def subset(self, index: np.ndarray) -> MappedRows:
        """The view of this view's rows `index` (positions within it)."""
        rows = self.index[index] if self.index is not None else np.asarray(index)
        return replace(self, index=rows)

    def _positions(self, index: torch.Tensor | np.ndarray | slice) -> np.ndarray | slice:
        if isinstance(index, slice):
            return index if self.index is None else self.index[index]
        positions = index.cpu().numpy() if isinstance(index, torch.Tensor) else index
        return positions if self.index is None else self.index[positions]

    def rows(self, index: torch.Tensor | np.ndarray | slice) -> Encoded:
        """The rows `index` as an in-memory `Encoded` (codes widened to int64)."""
        p = self._positions(index)
        codes = torch.from_numpy(self.codes_array[p].astype(np.int64))
        numbers = torch.from_numpy(np.array(self.numbers_array[p], dtype=np.float32))
        target = None
        if self.target_array is not None:
            target = torch.from_numpy(np.array(self.target_array[p]))
        return Encoded(codes, numbers, target)

    def cell_pools(self) -> tuple[MappedCells, MappedCells]:
        """The codes and numbers as pools of cells to draw from (`pool[rows, columns]`),
        read from the arrays cell by cell, never gathered whole."""
        return (
            MappedCells(self.codes_array, self.index, np.int64),
            MappedCells(self.numbers_array, self.index, np.float32),
        )

    def to(self, device: torch.device) -> MappedRows | Encoded:
        """On the CPU the view itself (batches are gathered from the map); on a GPU the
        whole table, copied in its compact types and widened there."""
        if device.type == "cpu":
            return self
        p = self._positions(slice(None))
        codes = torch.from_numpy(np.ascontiguousarray(self.codes_array[p])).to(device).long()
        numbers = torch.from_numpy(np.array(self.numbers_array[p], dtype=np.float32))
        target = None
        if self.target_array is not None:
            target = torch.from_numpy(np.array(self.target_array[p])).to(device)
        return Encoded(codes, numbers.to(device), target)

    @property
    def codes(self) -> torch.Tensor:
        """Every row's codes, in memory (for whole-table uses such as reports)."""
        return self.rows(slice(None)).codes

    @property
    def numbers(self) -> torch.Tensor:
        return self.rows(slice(None)).numbers

    @property
    def target(self) -> torch.Tensor | None:
        if self.target_array is None:
            return None
        return torch.from_numpy(np.array(self.target_array[self._positions(slice(None))]))

    def compact(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The view's rows as in-memory compact arrays (to send to other hosts)."""
        p = self._positions(slice(None))
        target = np.array(self.target_array[p]) if self.target_array is not None else None
        return np.array(self.codes_array[p]), np.array(self.numbers_array[p]), target


@dataclass(frozen=True)
class MappedCells:
    """One array of a view as a pool of cells: `pool[rows, columns]` (index tensors of one
    shape) reads those cells, as indexing an in-memory tensor of the view's rows would."""

    array: np.ndarray  # (N, m), often memory-mapped
    index: np.ndarray | None  # the view's rows of the array (None: all, in order)
    dtype: type[np.generic]
    device = torch.device("cpu")

    def __len__(self) -> int:
        return len(self.index) if self.index is not None else self.array.shape[0]

    def __getitem__(self, key: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        rows, columns = (k.cpu().numpy() for k in key)
        if self.index is not None:
            rows = self.index[rows]
        return torch.from_numpy(np.asarray(self.array[rows, columns], dtype=self.dtype))


@contextlib.contextmanager
def scratch_folder(scratch: Path | None) -> Iterator[Path]:
    """The host's folder for encoded tables: `scratch`, or a temporary one for this run."""
    if scratch is not None:
        yield scratch
        return
    with tempfile.TemporaryDirectory(prefix="tabtransformer-") as folder:
        yield Path(folder)

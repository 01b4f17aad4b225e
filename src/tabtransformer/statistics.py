"""What fitting the preprocessing needs, gathered chunk by chunk and mergeable.

`FeatureStatistics.update(chunk)` counts each column's category tokens exactly and keeps a
seeded reservoir sample of SAMPLE_SIZE present numbers per column (every number while a
column has no more: then the fit is exact, as on a table read whole); `merge` joins the
statistics of other chunks, channels or hosts (an all-gather across hosts), and
`preprocessor` fits the `TablePreprocessor` from them: the vocabularies from the counts,
quantiles, median and bin edges from the sample. `TargetStatistics` does the same for the
target column and `target_encoder` fits the `TargetEncoder`.

Column kinds (categorical_index.json absent): a column is numeric when every present
value parses as a number. While a column may still be numeric its token counts are kept
only up to MAX_NUMERIC_TOKENS distinct values; a column that turns out categorical after
that is counted again (`needs_recount`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tabtransformer.errors import UserError
from tabtransformer.preprocessing import (
    MAX_QUANTILES,
    MAX_TRAINING_MAGNITUDE,
    CategoricalColumn,
    NumericColumn,
    TablePreprocessor,
    TargetEncoder,
    _bad_number,
    _is_numeric_column,
    _parse_numbers,
    fit_bin_edges,
    to_numbers,
    to_tokens,
)

log = logging.getLogger(__name__)

SAMPLE_SIZE = 100_000  # present numbers kept per numeric column for quantiles and bins
MAX_NUMERIC_TOKENS = 100_000  # distinct tokens counted while a column may be numeric
SAMPLE_SEED = 0


@dataclass
class NumberSample:
    """A uniform reservoir sample (algorithm R, seeded) of a column's present numbers."""

    values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    seen: int = 0

    def add(self, x: np.ndarray, rng: np.random.Generator) -> None:
        room = max(0, SAMPLE_SIZE - len(self.values))
        if room:
            self.values = np.concatenate([self.values, x[:room]])
        rest = x[room:]
        if len(rest):
            positions = self.seen + room + np.arange(len(rest))
            slots = rng.integers(0, positions + 1)
            keep = slots < SAMPLE_SIZE
            # the last value drawn into a slot wins, as a sequential reservoir would
            slot, value = slots[keep][::-1], rest[keep][::-1]
            slot, first = np.unique(slot, return_index=True)
            self.values[slot] = value[first]
        self.seen += len(x)

    def merged(self, other: NumberSample, rng: np.random.Generator) -> NumberSample:
        """The union when both hold every number and it fits; else a sample drawn from each
        in proportion to the numbers it stands for."""
        seen = self.seen + other.seen
        if seen <= SAMPLE_SIZE:
            return NumberSample(np.concatenate([self.values, other.values]), seen)
        take = round(SAMPLE_SIZE * self.seen / seen)
        take = min(take, len(self.values))
        rest = min(SAMPLE_SIZE - take, len(other.values))
        values = np.concatenate(
            [
                rng.choice(self.values, take, replace=False),
                rng.choice(other.values, rest, replace=False),
            ]
        )
        return NumberSample(values, seen)


def _beyond_training_range(values: pd.Series, bad: np.ndarray, column: str) -> UserError:
    """The error `to_numbers` gives in training for the `bad` values, kept to raise later
    (when the column turns out numeric)."""
    return _bad_number(
        values,
        bad,
        column,
        f"is out of range: numbers must be finite and at most {MAX_TRAINING_MAGNITUDE:g} "
        "in magnitude",
    )


@dataclass
class ColumnStatistics:
    """One column's counts (None: dropped past MAX_NUMERIC_TOKENS) and number sample."""

    name: str
    kind: str  # "auto" (numeric until a value is not), "categorical" or "numeric"
    numeric: bool = True
    counts: Counter | None = field(default_factory=Counter)
    sample: NumberSample = field(default_factory=NumberSample)
    n_missing: int = 0
    out_of_range: UserError | None = None

    def update(self, values: pd.Series, rng: np.random.Generator) -> None:
        if self.kind == "numeric":
            x = to_numbers(values, self.name, MAX_TRAINING_MAGNITUDE)
            self._add_numbers(x, rng)
            return
        if self.kind == "auto" and self.numeric and not _is_numeric_column(values):
            self.numeric = False
        if self.kind == "auto" and self.numeric:
            x = _parse_numbers(values).to_numpy(dtype="float64")
            bad = np.isinf(x) | (np.abs(x) > MAX_TRAINING_MAGNITUDE)
            if bad.any() and self.out_of_range is None:
                self.out_of_range = _beyond_training_range(values, bad, self.name)
            self._add_numbers(np.where(bad, np.nan, x), rng)
        self._count(values)

    def _add_numbers(self, x: np.ndarray, rng: np.random.Generator) -> None:
        present = x[~np.isnan(x)]
        self.n_missing += len(x) - len(present)
        self.sample.add(present, rng)

    def _count(self, values: pd.Series) -> None:
        if self.counts is None:
            return
        self.counts.update(to_tokens(values).value_counts(dropna=True).to_dict())
        if self.kind == "auto" and self.numeric and len(self.counts) > MAX_NUMERIC_TOKENS:
            self.counts = None

    def merged(self, other: ColumnStatistics, rng: np.random.Generator) -> ColumnStatistics:
        counts = None
        if self.counts is not None and other.counts is not None:
            counts = self.counts + other.counts
        return ColumnStatistics(
            self.name,
            self.kind,
            self.numeric and other.numeric,
            counts,
            self.sample.merged(other.sample, rng),
            self.n_missing + other.n_missing,
            self.out_of_range or other.out_of_range,
        )

    @property
    def categorical(self) -> bool:
        return self.kind == "categorical" or (self.kind == "auto" and not self.numeric)

    def vocabulary(self) -> CategoricalColumn:
        ordered = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return CategoricalColumn(self.name, [str(k) for k, _ in ordered])

    def quantile_map(self, numeric_bins: int) -> NumericColumn:
        if self.out_of_range is not None:
            raise self.out_of_range
        present = self.sample.values
        median = float(np.median(present)) if len(present) else 0.0
        if self.n_missing and not numeric_bins:
            log.info(
                "column '%s': %d missing value(s) imputed with the median %g",
                self.name,
                self.n_missing,
                median,
            )
        n_q = min(MAX_QUANTILES, len(present))
        quantiles = np.quantile(present, np.linspace(0, 1, n_q)) if n_q else []
        column = NumericColumn(self.name, [float(v) for v in quantiles], median)
        if numeric_bins:
            column.bin_edges = fit_bin_edges(column.normal(pd.Series(present)), numeric_bins)
        return column


@dataclass
class FeatureStatistics:
    """Every feature column's statistics, in table order."""

    columns: list[ColumnStatistics]
    n_rows: int = 0

    @classmethod
    def start(cls, names: list[str], categorical: list[str] | None) -> FeatureStatistics:
        """Empty statistics; `categorical` None: kinds from the values."""

        def kind(name: str) -> str:
            if categorical is None:
                return "auto"
            return "categorical" if name in categorical else "numeric"

        return cls([ColumnStatistics(n, kind(n)) for n in names])

    @classmethod
    def of(cls, features: pd.DataFrame, categorical: list[str] | None) -> FeatureStatistics:
        """The statistics of one whole frame."""
        stats = cls.start([str(c) for c in features.columns], categorical)
        stats.update(features)
        return stats

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def update(self, chunk: pd.DataFrame) -> None:
        rng = _rng(self.n_rows)
        for column, name in zip(self.columns, chunk.columns, strict=True):
            column.update(chunk[name], rng)
        self.n_rows += len(chunk)

    def merged(self, other: FeatureStatistics) -> FeatureStatistics:
        rng = _rng(self.n_rows + other.n_rows)
        return FeatureStatistics(
            [a.merged(b, rng) for a, b in zip(self.columns, other.columns, strict=True)],
            self.n_rows + other.n_rows,
        )

    def needs_recount(self) -> list[str]:
        """Categorical columns whose counts were dropped while they looked numeric."""
        return [c.name for c in self.columns if c.categorical and c.counts is None]

    def recount(self, name: str, chunks: Any) -> None:
        """Count `name`'s tokens again over `chunks` (frames holding that column)."""
        column = next(c for c in self.columns if c.name == name)
        column.counts = Counter()
        for chunk in chunks:
            column.counts.update(to_tokens(chunk[name]).value_counts(dropna=True).to_dict())

    def preprocessor(self, continuous_bins: int = 0, numeric_bins: int = 0) -> TablePreprocessor:
        """Fit vocabularies, quantiles and (numeric_bins > 0) bin edges."""
        cats = [c.vocabulary() for c in self.columns if c.categorical]
        nums = [c.quantile_map(numeric_bins) for c in self.columns if not c.categorical]
        return TablePreprocessor(self.names, cats, nums, continuous_bins, numeric_bins)


def _rng(n_rows: int) -> np.random.Generator:
    """The sampling generator of a chunk or merge: seeded by the rows seen before it, so
    that a run is reproducible."""
    return np.random.default_rng([SAMPLE_SEED, n_rows])


@dataclass
class TargetStatistics:
    """A labelled channel's target: its name, the number of rows, whether every label is a
    number, the numbers (float64, while all are), and the distinct text labels (None: more
    than MAX_NUMERIC_TOKENS while every label was a number; when a later label is not,
    `recount_labels` reads the earlier chunks again)."""

    name: str
    n_rows: int = 0
    numeric: bool = True
    numbers: list[np.ndarray] = field(default_factory=list)
    labels: set[str] | None = field(default_factory=set)
    labels_from_row: int = 0  # the labels of rows before this one are not in `labels`
    first_missing: str | None = None
    n_missing: int = 0
    non_finite: UserError | None = None
    too_large: UserError | None = None  # beyond MAX_TRAINING_MAGNITUDE: refused in regression

    def update(self, target: pd.Series) -> None:
        missing = target.isna().to_numpy()
        if missing.any():
            if self.first_missing is None:
                file, line = target.index[int(missing.argmax())]
                self.first_missing = f"File {file}, line {line}"
            self.n_missing += int(missing.sum())
        if self.numeric and not _is_numeric_column(target):
            self.numeric, self.numbers = False, []
            if self.labels is None:
                self.labels, self.labels_from_row = set(), self.n_rows
        self.n_rows += len(target)
        if self.numeric:
            x = _parse_numbers(target).to_numpy(dtype="float64")
            if np.isinf(x).any() and self.non_finite is None:
                self.non_finite = _bad_number(
                    target,
                    np.isinf(x),
                    self.name,
                    "is out of range: numbers must be finite",
                )
            huge = np.isfinite(x) & (np.abs(x) > MAX_TRAINING_MAGNITUDE)
            if huge.any() and self.too_large is None:
                self.too_large = _beyond_training_range(target, huge, self.name)
            self.numbers.append(x)
        if self.labels is not None:
            self.labels.update(str(v).strip() for v in target.dropna().unique())
            if self.numeric and len(self.labels) > MAX_NUMERIC_TOKENS:
                self.labels = None

    def recount_labels(self, targets: Iterator[pd.Series]) -> None:
        """Collect the text labels of every row (when the first chunks looked numeric)."""
        if self.numeric or not self.labels_from_row:
            return
        self.labels = set()
        for target in targets:
            self.labels.update(str(v).strip() for v in target.dropna().unique())
        self.labels_from_row = 0

    def merged(self, other: TargetStatistics) -> TargetStatistics:
        numeric = self.numeric and other.numeric
        labels = None
        if self.labels is not None and other.labels is not None:
            labels = self.labels | other.labels
        elif not numeric:
            raise UserError(
                f"The target ({self.name}) holds text on one host and more than "
                f"{MAX_NUMERIC_TOKENS} distinct numbers on another: give every host "
                "labels of one kind."
            )
        return TargetStatistics(
            self.name,
            self.n_rows + other.n_rows,
            numeric,
            self.numbers + other.numbers if numeric else [],
            labels,
            max(self.labels_from_row, other.labels_from_row),
            self.first_missing or other.first_missing,
            self.n_missing + other.n_missing,
            self.non_finite or other.non_finite,
            self.too_large or other.too_large,
        )

    def check_present(self, column: str) -> None:
        if self.n_missing:
            raise UserError(
                f"{self.first_missing}: the target ({column}) is empty. "
                f"{self.n_missing} row(s) have no target; remove them or fill them in."
            )

    def target_encoder(self, task: str, max_classes: int) -> TargetEncoder:
        """`TargetEncoder.fit` on these labels: numbers are passed whole (the same fit as
        on the table); text labels as their distinct values (all the fit uses)."""
        if self.numeric:
            if self.non_finite is not None:
                raise self.non_finite
            x = np.concatenate(self.numbers) if self.numbers else np.zeros(0)
            try:
                return TargetEncoder.fit(pd.Series(x, name=self.name), task, max_classes)
            except UserError:
                if self.too_large is not None:  # name the file and line, not the row
                    raise self.too_large from None
                raise
        labels = sorted(self.labels)
        if self.n_rows >= 2 and len(labels) == 1:
            labels = labels * 2  # a single class, on enough rows: the fit says so
        target = pd.Series(labels if self.n_rows >= 2 else labels[:1], name=self.name)
        return TargetEncoder.fit(target, task, max_classes)

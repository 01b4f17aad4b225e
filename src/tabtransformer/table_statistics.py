"""A table's fit statistics, gathered chunk by chunk and mergeable across channels and hosts.

`FeatureStatistics.update(chunk)` adds a chunk to each feature column's statistics
(`preprocessing.ColumnStatistics`: category tokens counted exactly, a seeded reservoir
sample of SAMPLE_SIZE present numbers, every number while a column has no more: then the
fit is exact, as on a table read whole); `merged` joins the statistics of other chunks,
channels or hosts (an all-gather across hosts), and `preprocessor` fits the
`TablePreprocessor` from them: the vocabularies from the counts, quantiles, median and bin
edges from the sample. `TargetStatistics` does the same for the target column and
`target_encoder` fits the `TargetEncoder`.

Column kinds (categorical_index.json absent): a column is numeric when every present
value parses as a number. While a column may still be numeric its token counts are kept
only up to MAX_NUMERIC_TOKENS distinct values; a column that turns out categorical after
that is counted again (`needs_recount`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tabtransformer.errors import UserError
from tabtransformer.preprocessing import (
    MAX_NUMERIC_TOKENS,
    MAX_TRAINING_MAGNITUDE,
    ColumnStatistics,
    TablePreprocessor,
    TargetEncoder,
    bad_number,
    beyond_training_range,
    column_statistics,
    is_numeric_column,
    parse_numbers,
    sample_rng,
    to_tokens,
    update_columns,
)


@dataclass
class FeatureStatistics:
    """Every feature column's statistics, in table order."""

    columns: list[ColumnStatistics]
    n_rows: int = 0

    @classmethod
    def start(cls, names: list[str], categorical: list[str] | None) -> FeatureStatistics:
        """Empty statistics; `categorical` None: kinds from the values."""
        return cls(column_statistics(names, categorical))

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def update(self, chunk: pd.DataFrame) -> None:
        update_columns(self.columns, chunk, self.n_rows)
        self.n_rows += len(chunk)

    def merged(self, other: FeatureStatistics) -> FeatureStatistics:
        rng = sample_rng(self.n_rows + other.n_rows)
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
        return TablePreprocessor.from_statistics(self.columns, continuous_bins, numeric_bins)


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
        if self.numeric and not is_numeric_column(target):
            self.numeric, self.numbers = False, []
            if self.labels is None:
                self.labels, self.labels_from_row = set(), self.n_rows
        self.n_rows += len(target)
        if self.numeric:
            x = parse_numbers(target).to_numpy(dtype="float64")
            if np.isinf(x).any() and self.non_finite is None:
                self.non_finite = bad_number(
                    target,
                    np.isinf(x),
                    self.name,
                    "is out of range: numbers must be finite",
                )
            huge = np.isfinite(x) & (np.abs(x) > MAX_TRAINING_MAGNITUDE)
            if huge.any() and self.too_large is None:
                self.too_large = beyond_training_range(target, huge, self.name)
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

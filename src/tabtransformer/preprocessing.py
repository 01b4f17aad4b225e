"""Fitted preprocessing: category vocabularies, numeric transforms and target encoding.

Small scikit-learn-style objects (`fit`, `transform`) whose fitted state is plain data
(`to_dict` / `from_dict`), saved as JSON in the model artifact.

Categorical codes: 0 = missing (also the MLM mask token), 1 = unseen at training time,
2.. = the training categories. Numeric columns are mapped through their empirical
quantiles onto a standard normal (robust to skew and outliers); missing numbers become 0,
the median. With numeric tokens (`numeric_bins` > 0, for numeric_embedding=ple/periodic),
missing numbers stay NaN for the model's learned missing embedding instead, and each numeric
column also stores `bin_edges`: up to `numeric_bins` + 1 quantile edges of its N(0, 1)
scores on the training rows (the piecewise-linear encoding's bins, and the bin an MLM
target can name).

A column's transform is fitted from its statistics (`ColumnStatistics`): its category
tokens counted exactly, and a seeded reservoir sample of SAMPLE_SIZE present numbers
(every number while a column has no more: then the fit is exact). `TablePreprocessor.fit`
gathers them over one frame; `table_statistics` gathers them chunk by chunk and merges
them across channels and hosts, then fits with `TablePreprocessor.from_statistics`.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from rtdl_num_embeddings import compute_bins
from scipy.special import ndtri

from tabtransformer.errors import UserError

log = logging.getLogger(__name__)

MISSING_CODE = 0
UNSEEN_CODE = 1
N_SPECIAL_CODES = 2
MAX_QUANTILES = 1000
TASKS = ("binary", "multiclass", "regression")
# The largest magnitude of a number trained on. Beyond it, differences and squares (quantile
# interpolation, standardising the target, squared errors) can overflow float64.
MAX_TRAINING_MAGNITUDE = 1e150
MAX_BINNING_ROWS = 1_000_000  # bin edges come from an evenly spaced subsample beyond this
FALLBACK_BIN_EDGES = [-1.0, 0.0, 1.0]  # a column with too few distinct values for quantiles
SAMPLE_SIZE = 100_000  # present numbers kept per numeric column for quantiles and bins
MAX_NUMERIC_TOKENS = 100_000  # distinct tokens counted while a column may be numeric
SAMPLE_SEED = 0


def where(label: Any) -> str:
    """Describe a row index label: `(file, line)` from a channel, or a request row number."""
    if isinstance(label, tuple):
        return f"file {label[0]}, line {label[1]}"
    return f"row {label}"


def to_numbers(values: pd.Series, column: str, limit: float = math.inf) -> np.ndarray:
    """Parse a column as float64 (missing = NaN).

    A value that is not a number, is infinite, or exceeds `limit` in magnitude (training
    passes MAX_TRAINING_MAGNITUDE) raises a UserError naming its row and column.
    """
    if pd.api.types.is_bool_dtype(values.dtype):
        return values.astype("float64").to_numpy()
    numbers = parse_numbers(values)
    bad = (numbers.isna() & values.notna()).to_numpy()
    if bad.any():
        raise bad_number(
            values, bad, column, f"is not a number, and '{column}' is a numeric column"
        )
    x = numbers.to_numpy(dtype="float64")
    out_of_range = np.isinf(x) | (np.abs(x) > limit)  # NaN (missing) compares False
    if out_of_range.any():
        bound = f" and at most {limit:g} in magnitude" if math.isfinite(limit) else ""
        raise bad_number(
            values, out_of_range, column, f"is out of range: numbers must be finite{bound}"
        )
    return x


def parse_numbers(values: pd.Series) -> pd.Series:
    """pd.to_numeric, tolerating what it cannot take (ints beyond float range: infinite)."""
    try:
        return pd.to_numeric(values, errors="coerce")
    except (OverflowError, TypeError, ValueError):
        return pd.Series([_to_float(v) for v in values], index=values.index, dtype="float64")


def _to_float(value: Any) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer too large for float64
        return math.inf if value > 0 else -math.inf
    except (TypeError, ValueError):
        return math.nan


def bad_number(values: pd.Series, bad: np.ndarray, column: str, problem: str) -> UserError:
    first = int(bad.argmax())
    shown = repr(values.iloc[first])
    if len(shown) > 60:
        shown = f"{shown[:40]}... ({len(shown)} characters)"
    return UserError(
        f"{where(values.index[first])}, column '{column}': {shown} {problem} "
        f"({int(bad.sum())} such value(s)). Send a number, or an empty cell for missing."
    )


def to_tokens(values: pd.Series) -> pd.Series:
    """Category tokens as strings (missing stays NaN): text is stripped, numbers lose a
    trailing '.0' so that 1, 1.0 and "1" agree. Vectorised except for mixed-type columns."""
    if pd.api.types.is_bool_dtype(values.dtype):
        return values.map({True: "true", False: "false"})
    if pd.api.types.is_numeric_dtype(values.dtype):
        x = values.to_numpy(dtype="float64")
        with np.errstate(invalid="ignore"):  # infinite and huge numbers stay as text
            whole = np.isfinite(x) & (np.mod(x, 1) == 0) & (np.abs(x) < 2.0**63)
            ints = np.where(whole, x, 0).astype(np.int64).astype(str)
        text = np.where(whole, ints, x.astype(str))
        return pd.Series(text, index=values.index, dtype=object).where(~np.isnan(x))
    if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
        return values.astype(object).str.strip()
    return values.map(_token, na_action="ignore")


def _token(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    return str(value).strip()


def is_numeric_column(values: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(values.dtype):
        return False
    if pd.api.types.is_numeric_dtype(values.dtype):
        return True
    present = values.dropna()
    return bool(parse_numbers(present).notna().all())


@dataclass
class CategoricalColumn:
    """A categorical column's vocabulary: category i has code i + 2."""

    name: str
    categories: list[str]

    @property
    def cardinality(self) -> int:
        return len(self.categories) + N_SPECIAL_CODES

    def encode(self, values: pd.Series) -> np.ndarray:
        tokens = to_tokens(values)
        codes = pd.Index(self.categories).get_indexer(tokens).astype(np.int64)  # -1: not found
        present = tokens.notna().to_numpy()
        return np.where(
            codes >= 0, codes + N_SPECIAL_CODES, np.where(present, UNSEEN_CODE, MISSING_CODE)
        )


@dataclass
class NumericColumn:
    """A numeric column's quantile map onto N(0, 1); `median` is the raw imputed value;
    `bin_edges` (numeric tokens only) are sorted edges on the N(0, 1) scale; `flag`: at
    most two distinct values were present in training (a yes/no column)."""

    name: str
    quantiles: list[float]
    median: float
    bin_edges: list[float] | None = None
    flag: bool = False

    def normal(self, values: pd.Series) -> np.ndarray:
        """The N(0, 1) score of each value; NaN where the value is missing."""
        x = to_numbers(values, self.name)
        q = np.asarray(self.quantiles)
        if len(q) < 2:
            return np.where(np.isnan(x), np.nan, 0.0)
        ref = np.linspace(0.0, 1.0, len(q))
        # Averaging the forward and backward interpolation maps ties to their middle rank.
        u = 0.5 * (np.interp(x, q, ref) - np.interp(-x, -q[::-1], -ref[::-1]))
        return ndtri(np.clip(u, 1e-4, 1 - 1e-4))


def fit_bin_edges(z: np.ndarray, n_bins: int) -> list[float]:
    """Quantile bin edges (rtdl_num_embeddings.compute_bins) of the present scores `z`,
    distinct in float32; a column with fewer than 3 distinct values (or edges) gets
    FALLBACK_BIN_EDGES."""
    present = z[~np.isnan(z)]
    if len(present) > MAX_BINNING_ROWS:
        present = present[:: -(-len(present) // MAX_BINNING_ROWS)]
    n_bins = min(n_bins, len(present) - 1)
    if len(np.unique(present)) < 3 or n_bins < 2:
        return list(FALLBACK_BIN_EDGES)
    edges = compute_bins(torch.from_numpy(present[:, None].astype(np.float64)), n_bins)[0]
    # The model holds edges in float32: edges a float64 apart merge there (PLE needs them
    # strictly increasing).
    edges = np.unique(edges.numpy().astype(np.float32))
    return [float(v) for v in edges] if len(edges) >= 3 else list(FALLBACK_BIN_EDGES)


def bin_codes(z: np.ndarray, n_bins: int) -> np.ndarray:
    """Token codes of N(0, 1) scores in `n_bins` equal-mass bins; missing -> MISSING_CODE."""
    edges = ndtri(np.linspace(0, 1, n_bins + 1)[1:-1])
    codes = np.digitize(np.nan_to_num(z), edges) + N_SPECIAL_CODES
    return np.where(np.isnan(z), MISSING_CODE, codes)


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


def beyond_training_range(values: pd.Series, bad: np.ndarray, column: str) -> UserError:
    """The error `to_numbers` gives in training for the `bad` values, kept to raise later
    (when the column turns out numeric)."""
    return bad_number(
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
        if self.kind == "auto" and self.numeric and not is_numeric_column(values):
            self.numeric = False
        if self.kind == "auto" and self.numeric:
            x = parse_numbers(values).to_numpy(dtype="float64")
            bad = np.isinf(x) | (np.abs(x) > MAX_TRAINING_MAGNITUDE)
            if bad.any() and self.out_of_range is None:
                self.out_of_range = beyond_training_range(values, bad, self.name)
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
        flag = len(np.unique(present)) <= 2
        column = NumericColumn(self.name, [float(v) for v in quantiles], median, flag=flag)
        if numeric_bins:
            column.bin_edges = fit_bin_edges(column.normal(pd.Series(present)), numeric_bins)
        return column


def column_statistics(names: list[str], categorical: list[str] | None) -> list[ColumnStatistics]:
    """Empty statistics of the columns `names`; `categorical` None: kinds from the values."""

    def kind(name: str) -> str:
        if categorical is None:
            return "auto"
        return "categorical" if name in categorical else "numeric"

    return [ColumnStatistics(n, kind(n)) for n in names]


def update_columns(columns: list[ColumnStatistics], chunk: pd.DataFrame, rows_before: int) -> None:
    """Add a chunk's rows (its columns: those of `columns`, in order) to their statistics;
    `rows_before`: the rows the statistics hold already (they seed the sampling)."""
    rng = sample_rng(rows_before)
    for column, name in zip(columns, chunk.columns, strict=True):
        column.update(chunk[name], rng)


def sample_rng(n_rows: int) -> np.random.Generator:
    """The sampling generator of a chunk or merge: seeded by the rows seen before it, so
    that a run is reproducible."""
    return np.random.default_rng([SAMPLE_SEED, n_rows])


@dataclass
class TablePreprocessor:
    """Maps a feature table to (categorical codes, numeric floats) and back to a schema."""

    feature_names: list[str]
    categorical: list[CategoricalColumn]
    numeric: list[NumericColumn]
    continuous_bins: int = 0  # > 0: numeric columns also become bin tokens (after the cats)
    numeric_bins: int = 0  # > 0: numeric tokens: bin edges fitted, missing numbers stay NaN

    @classmethod
    def fit(
        cls,
        features: pd.DataFrame,
        categorical: list[str] | None,
        continuous_bins: int = 0,
        numeric_bins: int = 0,
    ) -> TablePreprocessor:
        """Learn vocabularies, quantiles and (numeric_bins > 0) bin edges.
        `categorical=None`: text columns are categorical. Numbers beyond SAMPLE_SIZE per
        column are sampled (see `ColumnStatistics`)."""
        columns = column_statistics([str(c) for c in features.columns], categorical)
        update_columns(columns, features, 0)
        return cls.from_statistics(columns, continuous_bins, numeric_bins)

    @classmethod
    def from_statistics(
        cls, columns: list[ColumnStatistics], continuous_bins: int = 0, numeric_bins: int = 0
    ) -> TablePreprocessor:
        """Fit vocabularies (from the counts), quantiles and (numeric_bins > 0) bin edges
        (from the number samples) of the columns' statistics, in table order."""
        cats = [c.vocabulary() for c in columns if c.categorical]
        nums = [c.quantile_map(numeric_bins) for c in columns if not c.categorical]
        return cls([c.name for c in columns], cats, nums, continuous_bins, numeric_bins)

    def transform(self, features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Encode a frame whose columns are `feature_names` into int64 codes and float32
        numbers (missing: 0, the median; with numeric tokens: NaN)."""
        n = len(features)
        codes = np.zeros((n, len(self.cardinalities)), dtype=np.int64)
        for j, col in enumerate(self.categorical):
            codes[:, j] = col.encode(features[col.name])
        numbers = np.zeros((n, len(self.numeric)), dtype=np.float32)
        for j, col in enumerate(self.numeric):
            z = col.normal(features[col.name])
            numbers[:, j] = z if self.numeric_bins else np.nan_to_num(z, nan=0.0)
            if self.continuous_bins:
                codes[:, len(self.categorical) + j] = bin_codes(z, self.continuous_bins)
        return codes, numbers

    @property
    def cardinalities(self) -> list[int]:
        """Token vocabulary sizes: categorical columns, then binned numeric columns."""
        bins = [self.continuous_bins + N_SPECIAL_CODES] * len(self.numeric)
        return [c.cardinality for c in self.categorical] + (bins if self.continuous_bins else [])

    @property
    def schema(self) -> dict[str, Any]:
        """What a fine-tuning job's table must match: column names, order and kinds."""
        return {
            "feature_names": self.feature_names,
            "categorical": [c.name for c in self.categorical],
        }

    def check_schema(self, features: pd.DataFrame, categorical: list[str] | None) -> None:
        """A table fine-tuned from this preprocessor must have its columns, in its order,
        of its kinds (`categorical`: the columns categorical_index.json names, if any)."""
        expected, found = self.feature_names, [str(c) for c in features.columns]
        if found != expected:
            missing = [c for c in expected if c not in found]
            extra = [c for c in found if c not in expected]
            detail = (
                f"missing {missing}; unexpected {extra}"
                if missing or extra
                else "the same columns in another order"
            )
            raise UserError(
                f"The training data does not match the schema of the model in the 'model' "
                f"channel: {detail}. Expected feature columns {expected}, found {found}."
            )
        if categorical is not None and sorted(categorical) != sorted(self.schema["categorical"]):
            raise UserError(
                f"categorical_index.json names the categorical columns {sorted(categorical)} "
                f"but the model in the 'model' channel was built with "
                f"{self.schema['categorical']}."
            )

    def describe(self) -> str:
        cats = ", ".join(f"{c.name}({len(c.categories)})" for c in self.categorical) or "none"
        nums = ", ".join(c.name for c in self.numeric) or "none"
        return f"categorical columns (categories): {cats}; numeric columns: {nums}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature_names": self.feature_names,
            "categorical": [asdict(c) for c in self.categorical],
            "numeric": [asdict(c) for c in self.numeric],
            "continuous_bins": self.continuous_bins,
            "numeric_bins": self.numeric_bins,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TablePreprocessor:
        return cls(
            data["feature_names"],
            [CategoricalColumn(**c) for c in data["categorical"]],
            [NumericColumn(**c) for c in data["numeric"]],
            data.get("continuous_bins", 0),
            data.get("numeric_bins", 0),
        )


class TooManyClasses(UserError):
    """task=auto found more distinct text labels than max_classes (the caller may add
    where the labels come from)."""


def too_many_classes(target: pd.Series, n_unique: int, max_classes: int) -> TooManyClasses:
    """The error for `n_unique` distinct text labels beyond `max_classes`, with a few."""
    shown = ", ".join(repr(str(v)[:40]) for v in pd.unique(target.dropna())[:5])
    name = _column_name(target)
    column = f"column {name}" if name.isdigit() else f"'{name}'"  # headerless: file column
    return TooManyClasses(
        f"The target ({column}) has {n_unique} distinct text labels "
        f"(e.g. {shown}), more than max_classes={max_classes}: with task=auto, text labels "
        f"are classes only up to max_classes. If the labels are numbers, set "
        "task=regression (and write them with a decimal point, not a comma); if they are "
        "classes, set task=multiclass or raise max_classes."
    )


def decide(probabilities: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Class indexes (N,) of probabilities (N, C): the second class of two where its
    probability is at least `threshold`, else (None, or more classes) the most probable."""
    if threshold is None or probabilities.shape[1] != 2:
        return probabilities.argmax(axis=1)
    return (probabilities[:, 1] >= threshold).astype(np.int64)


@dataclass
class TargetEncoder:
    """Detects the task and encodes labels: class indexes, or a standardised number; and
    decides labels from probabilities (`threshold`: binary, the second class's probability
    from which it is the label, chosen after training; None: the most probable class)."""

    task: str
    classes: list[Any] | None = None
    mean: float = 0.0
    std: float = 1.0
    threshold: float | None = None

    @classmethod
    def fit(cls, target: pd.Series, task: str, max_classes: int) -> TargetEncoder:
        """Detect (task='auto') or check the task and learn the classes or the scaling."""
        if len(target) < 2:
            raise UserError(
                f"The training data has {len(target)} labelled row(s): training needs at "
                "least 2 (and enough to hold some out for validation unless there is a "
                "'validation' channel)."
            )
        numeric = is_numeric_column(target)
        column = _column_name(target)
        if task == "auto":
            if numeric:
                x = to_numbers(target, column)
                is_int = bool(np.all(np.mod(x, 1) == 0))
                n_unique = len(np.unique(x))
                classes = is_int and n_unique <= max_classes
                task = ("binary" if n_unique == 2 else "multiclass") if classes else "regression"
            else:
                n_unique = target.nunique()
                if n_unique > max_classes:
                    raise too_many_classes(target, n_unique, max_classes)
                task = "binary" if n_unique == 2 else "multiclass"
        if task == "regression":
            x = to_numbers(target, column, MAX_TRAINING_MAGNITUDE)
            std = float(np.std(x))
            return cls("regression", None, float(np.mean(x)), std if std > 0 else 1.0)
        labels = _labels(target, numeric)
        classes = sorted(set(labels), key=lambda v: (isinstance(v, str), v))
        if len(classes) < 2:
            raise UserError(
                f"The target has a single value ({classes[0]!r}): classification "
                "needs at least two classes."
            )
        if task == "binary" and len(classes) != 2:
            raise UserError(
                f"task=binary needs exactly 2 classes but the target has "
                f"{len(classes)}: {classes[:10]}. Use task=multiclass."
            )
        return cls(task, classes)

    @property
    def n_outputs(self) -> int:
        return 1 if self.task == "regression" else len(self.classes)

    def encode(self, target: pd.Series) -> np.ndarray:
        """Labels to class indexes (int64) or to the standardised target (float32)."""
        if self.task == "regression":
            x = to_numbers(target, _column_name(target), MAX_TRAINING_MAGNITUDE)
            return ((x - self.mean) / self.std).astype(np.float32)  # a fresh, writable array
        # Text classes take labels as text (a chunk of a text column may hold numbers only).
        numeric = not isinstance(self.classes[0], str) and is_numeric_column(target)
        labels = pd.Series(_labels(target, numeric), index=target.index, dtype=object)
        index = {c: i for i, c in enumerate(self.classes)}
        codes = labels.map(index)
        unknown = codes.isna()
        if unknown.any():
            label = target.index[unknown.to_numpy().argmax()]
            raise UserError(
                f"{where(label)}: label {labels[label]!r} is not among the "
                f"training classes {self.classes[:20]}."
            )
        return codes.to_numpy(dtype=np.int64, copy=True)

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        """Class indexes (N,) of class probabilities (N, C), at the decision threshold."""
        return decide(probabilities, self.threshold)

    def decode_regression(self, standardised: np.ndarray) -> np.ndarray:
        return standardised * self.std + self.mean

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TargetEncoder:
        return cls(**data)


def _column_name(target: pd.Series) -> str:
    """The target's column name for messages: its header name, or its file column index."""
    return "target" if target.name is None else str(target.name)


def _labels(target: pd.Series, numeric: bool) -> list[Any]:
    """Class labels as JSON-friendly Python values: ints for integer labels, else strings."""
    if numeric:
        x = to_numbers(target, _column_name(target))
        if np.all(np.mod(x, 1) == 0):
            return [int(v) for v in x]
        return [float(v) for v in x]
    return [str(v).strip() for v in target]

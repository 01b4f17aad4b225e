"""Property-based robustness of the training-input readers (hypothesis, in-process).

The contract checked on generated inputs: a channel is read into a table with one row per
input record, or a UserError names the file (and line where there is one); never another
exception, never a lost or merged row. Likewise the fitted preprocessing gives finite
numbers or a UserError, and hyperparameters.parse gives valid values or a UserError.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_readers import read_labelled

from tabtransformer import hyperparameters
from tabtransformer.errors import UserError
from tabtransformer.preprocessing import TablePreprocessor, TargetEncoder

FAST = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# pyarrow's default CSV null markers: these cells read as missing.
NULL_MARKERS = {
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
    "1.#QNAN", "N/A", "NA", "NULL", "NaN", "n/a", "nan", "null",
}  # fmt: skip
# pyarrow cannot decode the text of a binary row for its invalid-row handler; it reports
# that as "Exception ignored" and fails the parse, which is a UserError here.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@contextmanager
def channel(data: bytes, name: str = "data.csv") -> Iterator[Path]:
    """A fresh channel folder holding one file `name` with `data`."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "training"
        folder.mkdir()
        (folder / name).write_bytes(data)
        yield folder


def assert_names_the_file(error: UserError, folder: Path, name: str) -> None:
    message = str(error)
    assert name in message or str(folder) in message, message
    assert "Traceback" not in message and len(message) < 2000


# --- arbitrary bytes ----------------------------------------------------------------------


@FAST
@given(
    data=st.binary(max_size=2000),
    header=st.booleans(),
    compress=st.booleans(),
)
def test_arbitrary_bytes_are_read_or_refused_with_the_file_named(
    data: bytes, header: bool, compress: bool
):
    raw = gzip.compress(data) if compress else data
    with channel(raw) as folder:
        try:
            table = read_labelled(folder, "c0" if header else "")
        except UserError as error:
            assert_names_the_file(error, folder, "data.csv")
            return
        assert len(table.features) == len(table.target) >= 1


@FAST
@given(data=st.binary(min_size=1, max_size=3000), cut=st.floats(0, 1))
def test_damaged_gzip_is_refused_with_the_file_named(data: bytes, cut: float):
    whole = gzip.compress(data)
    damaged = whole[: max(2, int(len(whole) * cut))]
    with channel(damaged, "part.gz") as folder:
        try:
            read_labelled(folder, "")
        except UserError as error:
            assert_names_the_file(error, folder, "part.gz")


# --- CSV shapes ---------------------------------------------------------------------------

cell_text = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs",),  # no lone surrogates: not encodable as UTF-8
        blacklist_characters="\ufeff\x00",  # a leading BOM is indistinguishable from one
    ),
    max_size=12,
) | st.sampled_from(["", "NA", "null", ",", '"', "\n", "\r\n", "a\rb", ' "q" ', "-0", "1e400"])


@st.composite
def csv_tables(draw: st.DrawFn) -> tuple[list[str], list[list[str]]]:
    """Column names and records; the target (column 0) is never missing."""
    n_columns = draw(st.integers(2, 5))
    names = draw(st.lists(cell_text.filter(bool), min_size=n_columns, max_size=n_columns,
                          unique=True))  # fmt: skip
    target = cell_text.filter(lambda t: t not in NULL_MARKERS)
    records = draw(
        st.lists(
            st.tuples(target, *[cell_text] * (n_columns - 1)).map(list),
            min_size=1,
            max_size=15,
        )
    )
    return names, records


def write_csv(names: list[str] | None, records: list[list[str]], quote_all: bool, eol: str) -> str:
    """RFC 4180 CSV. Python's csv.writer leaves a lone carriage return unquoted when the
    line terminator is "\n", which no reader can tell from a line end: quote it here."""

    def field(text: str) -> str:
        if quote_all or any(c in text for c in ',"\r\n'):
            return '"' + text.replace('"', '""') + '"'
        return text

    rows = ([names] if names is not None else []) + records
    return "".join(",".join(map(field, row)) + eol for row in rows)


@FAST
@given(
    table=csv_tables(),
    header=st.booleans(),
    bom=st.booleans(),
    compress=st.booleans(),
    quote_all=st.booleans(),
    eol=st.sampled_from(["\n", "\r\n"]),
)
def test_csv_records_are_read_one_row_each_with_their_values(
    table, header: bool, bom: bool, compress: bool, quote_all: bool, eol: str
):
    names, records = table
    text = ("\ufeff" if bom else "") + write_csv(names if header else None, records, quote_all, eol)
    data = text.encode()
    with channel(gzip.compress(data) if compress else data) as folder:
        read = read_labelled(folder, names[0] if header else "")
    assert len(read.target) == len(records)  # never a lost or merged row
    expected = [[None if c in NULL_MARKERS else c for c in r] for r in records]
    got_target = read.target.tolist()
    assert got_target == [r[0] for r in expected]
    got_features = read.features.astype(object).where(read.features.notna(), None)
    assert got_features.values.tolist() == [r[1:] for r in expected]
    if header:
        assert list(read.features.columns) == names[1:]


# --- numbers at the edges -----------------------------------------------------------------

edge_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(width=32).map(str),
    st.integers(-(10**400), 10**400).map(str),
    st.sampled_from(
        [
            "-0",
            "0.0",
            "1e-320",
            "5e-324",
            "1e150",
            "-1e150",
            "1e151",
            "1e308",
            "1e309",
            "inf",
            "-Infinity",
            "NaN",
            "",
            "+1",
            " 2 ",
            "1_000",
            "0x10",
            "1e",
            ".5",
            "9" * 400,
        ]
    ),
)


@FAST
@given(
    target=st.lists(edge_numbers, min_size=1, max_size=12),
    feature=st.lists(edge_numbers, min_size=12, max_size=12),
    task=st.sampled_from(["auto", "regression"]),
)
def test_numbers_at_the_edges_train_to_finite_values_or_are_refused(
    target: list[str], feature: list[str], task: str
):
    pairs = zip(target, feature[: len(target)], strict=True)
    lines = [f"{t},{x},{'ab'[i % 2]}" for i, (t, x) in enumerate(pairs)]
    with channel(("\n".join(lines) + "\n").encode()) as folder:
        try:
            table = read_labelled(folder, "")
            pre = TablePreprocessor.fit(table.features, None, continuous_bins=4)
            codes, numbers = pre.transform(table.features)
            encoder = TargetEncoder.fit(table.target, task, 20)
            encoded = encoder.encode(table.target)
        except UserError as error:
            message = str(error)
            assert "Traceback" not in message and len(message) < 2000
            if "line " in message:
                assert "data.csv" in message
            return
    assert len(codes) == len(numbers) == len(encoded) == len(lines)
    assert np.isfinite(numbers).all() and np.isfinite(encoded.astype(np.float64)).all()
    assert all(math.isfinite(q) for col in pre.numeric for q in col.quantiles)
    assert math.isfinite(encoder.mean) and math.isfinite(encoder.std) and encoder.std > 0


@FAST
@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=2, max_size=12))
def test_parquet_floats_at_the_edges_are_finite_or_refused(values: list[float]):
    table = pa.table({"y": [float(i % 3) for i in range(len(values))], "x": values})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    with channel(buffer.getvalue(), "data.parquet") as folder:
        try:
            read = read_labelled(folder, "y")
            pre = TablePreprocessor.fit(read.features, None)
            numbers = pre.transform(read.features)[1]
        except UserError as error:
            assert "data.parquet" in str(error) and "column 'x'" in str(error)
            return
    assert len(numbers) == len(values) and np.isfinite(numbers).all()


# --- hyperparameters ----------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**500), 10**500)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
hyperparameter_values = (
    json_values
    | json_values.map(lambda v: json.dumps(v))
    | st.sampled_from(
        ["1e400", "9" * 400, "true", "null", '"auto"', "rtd", "0", "-1", "0.5", "nan", "Infinity"]
    )
)


def assert_valid(values: dict) -> None:
    assert set(values) == set(hyperparameters.BY_NAME)
    for name, value in values.items():
        param = hyperparameters.BY_NAME[name]
        assert type(value) is param.type, (name, value)
        if param.choices is not None:
            assert value in param.choices
        if param.type in (int, float):
            assert math.isfinite(value)
            assert param.low is None or value >= param.low
            assert param.high is None or value <= param.high


@FAST
@given(raw=json_values)
def test_any_json_document_is_valid_hyperparameters_or_a_user_error(raw):
    try:
        assert_valid(hyperparameters.parse(raw))
    except UserError as error:
        assert len(str(error)) < 1024


@FAST
@given(
    raw=st.dictionaries(
        st.sampled_from(sorted(hyperparameters.BY_NAME)), hyperparameter_values, max_size=6
    )
)
def test_any_value_of_a_known_hyperparameter_is_valid_or_names_the_key(raw: dict):
    try:
        values = hyperparameters.parse(raw)
    except UserError as error:
        message = str(error)
        assert len(message) < 1024
        assert any(f"'{key}'" in message for key in raw), message
        return
    assert_valid(values)
    assert pd.Series(values).notna().all()

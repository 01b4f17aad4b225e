"""Table file formats: CSV (optionally gzip) and Parquet, parsed into pandas frames.

What the channel readers (`channels`, `streaming`) and the serving decoders
(`serving.codecs`) share, so that a cell reads the same in training and in serving:
- `parse_csv`: CSV text as a frame of strings (empty and NA-like cells missing), every
  row holding the same number of fields, errors placed by the caller ("File x.csv, line
  7" or "row 7"); `csv_options` are the pyarrow options it reads with, which the streamed
  reader reads with too;
- the format of a file decided by its content, not its name (`is_gzip`, `is_parquet`),
  and the error for a truncated gzip file (`damaged_gzip`);
- a CSV file's column names from its first record (`csv_columns`);
- Parquet data as pandas with a dtype per Parquet type (`parquet_frame`), flat columns
  only (`check_flat`), and the error for an unreadable Parquet file.

Imports no training code: serving uses it.
"""

from __future__ import annotations

import csv
import gzip
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from tabtransformer.errors import UserError

GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"
# The longest CSV row (record) read, in bytes: pyarrow parses in blocks of this size, and
# a row must fit in one block.
MAX_ROW_BYTES = 16 * 1024 * 1024
# pandas dtypes for Parquet types whose default conversion depends on the rows read.
PARQUET_PANDAS_TYPES = {pa.bool_(): pd.BooleanDtype()}
# What a truncated or damaged gzip stream raises (Python's gzip, and pyarrow's).
GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, OSError)


def leading_bytes(path: Path, n: int) -> bytes:
    """The first `n` bytes of a file (its magic number)."""
    with open(path, "rb") as f:
        return f.read(n)


def is_gzip(path: Path) -> bool:
    return leading_bytes(path, 2) == GZIP_MAGIC


def is_parquet(path: Path) -> bool:
    return leading_bytes(path, 4) == PARQUET_MAGIC


def damaged_gzip(path: Path, error: BaseException) -> UserError:
    return UserError(
        f"File {path} is a truncated or damaged gzip file ({error}). Upload it again, or "
        "check it with `gzip -t`."
    )


def unreadable_parquet(path: Path, error: BaseException) -> UserError:
    return UserError(f"Cannot read Parquet file {path}: {error}")


def _first_record(path: Path) -> list[str] | None:
    """The fields of the first CSV record (a header may span lines inside quotes); None
    when the file is empty. A UTF-8 byte-order mark is dropped."""
    compressed = is_gzip(path)
    opener = gzip.open if compressed else open
    csv.field_size_limit(max(csv.field_size_limit(), MAX_ROW_BYTES))
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig", errors="replace") as f:
            return next(csv.reader(f), None)
    except csv.Error as e:
        raise UserError(f"File {path}, line 1: cannot parse the CSV: {csv_advice(e)}") from None
    except GZIP_ERRORS as e:
        if not compressed:
            raise
        raise damaged_gzip(path, e) from None


def csv_columns(path: Path, header: bool) -> list[str]:
    """A CSV file's column names: its header's, or "0", "1", ... without one."""
    names = _first_record(path)
    if not names or names == [""]:
        raise UserError(
            f"File {path} is empty (its first line is blank). Remove it from the "
            "channel or fill it with rows."
        )
    if not header:
        return [str(i) for i in range(len(names))]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise UserError(f"File {path} has duplicate column names in its header: {dupes}.")
    return names


def parquet_frame(data: pa.Table | pa.RecordBatch) -> pd.DataFrame:
    """Parquet data as pandas, each column's dtype decided by its Parquet type alone (not
    by which rows were read): booleans become pandas' nullable "boolean" (without it, a
    read holding a null gives Python objects and one without gives numpy bool, which the
    column-kind detection tells apart), so whole and streamed reads agree."""
    return data.to_pandas(types_mapper=PARQUET_PANDAS_TYPES.get)


def check_flat(path: Path, schema: pa.Schema) -> None:
    """Parquet columns must be flat: numbers, text, booleans, dates (not lists or structs)."""
    for field in schema:
        if pa.types.is_nested(field.type):
            raise UserError(
                f"Parquet file {path}: column '{field.name}' has the nested type "
                f"{field.type}; every column must hold single values (numbers, text, "
                "booleans or dates). Flatten it first."
            )


def csv_options(
    names: list[str],
    skip_rows: int,
    bad_rows: list[pacsv.InvalidRow],
    include: list[str] | None = None,
) -> dict[str, Any]:
    """pyarrow's read, parse and convert options (keyword arguments of `read_csv` and
    `open_csv`) for CSV records of the fields `names`, after `skip_rows` records: every
    cell of the columns read (`include`; None: all) as text, empty and NA-like cells
    missing, quoted newlines allowed; a record with another number of fields is skipped
    and appended to `bad_rows` (`ragged_rows` is the error)."""

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad_rows.append(row)
        return "skip"

    read = names if include is None else include
    convert: dict[str, Any] = {} if include is None else {"include_columns": include}
    return {
        "read_options": pacsv.ReadOptions(
            column_names=names,
            skip_rows_after_names=skip_rows,  # records, not lines: a header may span lines
            use_threads=False,
            block_size=MAX_ROW_BYTES,
        ),
        "parse_options": pacsv.ParseOptions(
            invalid_row_handler=on_invalid, newlines_in_values=True
        ),
        "convert_options": pacsv.ConvertOptions(
            column_types={n: pa.string() for n in read}, strings_can_be_null=True, **convert
        ),
    }


def ragged_rows(
    bad_rows: list[pacsv.InvalidRow], n_columns: int, locate: Callable[[int | str], str]
) -> UserError:
    """The error for records whose number of fields is not `n_columns`, placed by
    `locate(line_number)` at the first of them."""
    row = bad_rows[0]
    return UserError(
        f"{locate(row.number if row.number is not None else '?')}: expected "
        f"{row.expected_columns} columns but found {row.actual_columns} "
        f"({len(bad_rows)} such row(s)). Every row must have {n_columns} columns. "
        f"Row text: {row.text[:200]!r}"
    )


def parse_csv(
    source: pa.NativeFile, names: list[str], skip_rows: int, locate: Callable[[int | str], str]
) -> pd.DataFrame:
    """Parse CSV into a frame of strings (empty and NA-like cells are missing).

    Every row must have `len(names)` fields; the first that does not raises a UserError
    that `locate(line_number)` places ("File x.csv, line 7" or "row 7").
    """
    bad_rows: list[pacsv.InvalidRow] = []
    try:
        table = pacsv.read_csv(source, **csv_options(names, skip_rows, bad_rows))
    except pa.ArrowException as e:
        raise UserError(f"{locate('?')}: cannot parse the CSV: {csv_advice(e)}") from None
    if bad_rows:
        raise ragged_rows(bad_rows, len(names), locate)
    return table.to_pandas()


def csv_advice(error: Exception) -> str:
    """A CSV parse error (pyarrow's or Python's), with what the user can do about it."""
    text = str(error)
    if "straddl" in text or "block size" in text or "field limit" in text:
        return (
            f"a row is longer than {MAX_ROW_BYTES // 2**20} MiB, the longest this algorithm "
            "reads (or a quote is not closed, so that the rest of the file reads as one "
            "field). Check the quoting, or shorten that row."
        )
    if "invalid UTF8" in text:
        return f"{text}. The CSV must be UTF-8 text: save it as UTF-8."
    return text

"""The whole-table readers of a channel: every file read at once into one pandas frame.

Training streams its channels (`tabtransformer.streaming`); these readers, which only the
tests use, read the same files whole, the reference the streamed reads are compared with.
Both list a channel's files and columns by `tabtransformer.channels` and parse them by
`tabtransformer.formats`. Every table comes back with a `(file, line)` MultiIndex so that
later checks can name the file and line of a bad value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tabtransformer.channels import channel_files, headerless_names, read_categorical_index
from tabtransformer.errors import UserError
from tabtransformer.formats import (
    GZIP_ERRORS,
    check_flat,
    csv_columns,
    damaged_gzip,
    is_gzip,
    is_parquet,
    parquet_frame,
    parse_csv,
    unreadable_parquet,
)


@dataclass
class LabelledTable:
    """Features and target of a labelled channel; both indexed by (file, line)."""

    features: pd.DataFrame
    target: pd.Series
    categorical_columns: list[str] | None  # from categorical_index.json, else None


def read_file(path: Path, header: bool) -> pd.DataFrame:
    """Read one CSV/gzip/Parquet file as strings (Parquet keeps its types).

    Returns a frame indexed by the 1-based line number in the file (header counted).
    Without a header, columns are named by their 0-based file index ("0", "1", ...).
    """
    if is_parquet(path):
        try:
            table = pq.read_table(path)
            check_flat(path, table.schema)
            frame = parquet_frame(table)
        except (pa.ArrowException, OSError) as e:
            raise unreadable_parquet(path, e) from None
        if not header:
            frame.columns = [str(i) for i in range(frame.shape[1])]
        frame.index = pd.RangeIndex(1, len(frame) + 1, name="line")
        return frame
    names = csv_columns(path, header)
    compression = "gzip" if is_gzip(path) else None
    try:
        frame = parse_csv(
            pa.input_stream(str(path), compression=compression),
            names,
            skip_rows=1 if header else 0,
            locate=lambda line: f"File {path}, line {line}",
        )
    except GZIP_ERRORS as e:
        if compression is None:
            raise
        raise damaged_gzip(path, e) from None
    start = 2 if header else 1
    frame.index = pd.RangeIndex(start, start + len(frame), name="line")
    return frame


def read_files(files: list[Path], header: bool) -> pd.DataFrame:
    """Read and concatenate files that must share one column layout."""
    frames = []
    for path in files:
        frame = read_file(path, header)
        if frames and list(frame.columns) != list(frames[0].columns):
            raise UserError(
                f"File {path} has {frame.shape[1]} columns {_describe(frame, header)} but "
                f"{files[0]} has {frames[0].shape[1]} {_describe(frames[0], header)}: all "
                "files of a channel must share one column layout."
            )
        frames.append(frame)
    table = pd.concat(frames, keys=[p.name for p in files], names=["file", "line"])
    if table.empty:
        raise UserError(f"The files {[p.name for p in files]} contain no data rows.")
    return table


def _describe(frame: pd.DataFrame, header: bool) -> str:
    return f"({', '.join(map(str, frame.columns))})" if header else ""


def read_labelled(directory: Path, target_column: str) -> LabelledTable:
    """Read a labelled channel (training or validation)."""
    header = bool(target_column)
    table = read_files(channel_files(directory), header)
    file_columns = list(table.columns)
    if header:
        if target_column not in table.columns:
            raise UserError(
                f"Target column '{target_column}' (hyperparameter target_column) is not in "
                f"the header of the files in {directory}. Columns found: "
                f"{', '.join(map(str, table.columns))}."
            )
        target = table[target_column]
        features = table.drop(columns=[target_column])
    else:
        if table.shape[1] < 2:
            raise UserError(
                f"Files in {directory} have a single column: the JumpStart layout needs the "
                "target in column 0 followed by at least one feature column."
            )
        target = table.iloc[:, 0]
        features = table.iloc[:, 1:]
        features.columns = headerless_names(features.shape[1])
    missing = target.isna()
    if missing.any():
        file, line = target.index[missing.argmax()]
        raise UserError(
            f"File {file}, line {line}: the target ({target_column or 'column 0'}) is empty. "
            f"{int(missing.sum())} row(s) have no target; remove them or fill them in."
        )
    target_index = file_columns.index(target_column) if header else 0
    cat_index = read_categorical_index(directory, len(file_columns), target_index)
    categorical = None
    if cat_index is not None:
        categorical = [file_columns[i] if header else f"c{i}" for i in cat_index]
    return LabelledTable(features=features, target=target, categorical_columns=categorical)

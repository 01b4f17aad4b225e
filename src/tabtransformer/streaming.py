"""Channel files read in chunks, never whole: the reader of every table training reads.

`labelled_channel` / `unlabeled_channel` open a channel as a `Channel`: where its target
and features are, by the layouts `channels` describes. `ChannelFiles.open` lists a
channel's files (`channels.channel_files`), reads their column names only, and checks that
they share one layout. `chunks()` then yields pandas frames of at most CHUNK_ROWS rows,
indexed by `(file, line)`, for the columns asked for; CSV (optionally gzip) through
pyarrow's streaming CSV reader with the options of `formats.parse_csv`, Parquet by record
batches. CSV cells come as text, Parquet typed (`formats.parquet_frame`), and the errors
name the file and line. The tests read the same files whole (tests/reference_readers.py)
and compare.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tabtransformer.channels import channel_files, headerless_names, read_categorical_index
from tabtransformer.errors import UserError
from tabtransformer.formats import (
    GZIP_ERRORS,
    check_flat,
    csv_advice,
    csv_columns,
    csv_options,
    damaged_gzip,
    is_gzip,
    is_parquet,
    parquet_frame,
    ragged_rows,
    unreadable_parquet,
)

CHUNK_ROWS = 65536  # rows per chunk: bounds the pandas frames alive at one time


@dataclass(frozen=True)
class ChannelFiles:
    """A channel's data files and their shared file columns ("0", "1", ... without a
    header; Parquet column i is read as "i" then)."""

    directory: Path
    files: list[Path]
    header: bool
    columns: list[str]
    # The data rows, once a pass over the files has finished (`n_rows`).
    counted: list[int] = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def open(cls, directory: Path, header: bool) -> ChannelFiles:
        """List the files and check that they share one column layout (names only)."""
        files = channel_files(directory)
        layouts = [_file_columns(path, header) for path in files]
        for path, layout in zip(files[1:], layouts[1:], strict=True):
            if layout != layouts[0]:
                raise UserError(
                    f"File {path} has {len(layout)} columns {_describe(layout, header)} but "
                    f"{files[0]} has {len(layouts[0])} {_describe(layouts[0], header)}: all "
                    "files of a channel must share one column layout."
                )
        return cls(directory, files, header, layouts[0])

    def chunks(self, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
        """Frames of at most CHUNK_ROWS rows of `columns` (default: all), file by file,
        indexed by (file name, line)."""
        wanted = list(columns if columns is not None else self.columns)
        rows = 0
        for path in self.files:
            read = _parquet_chunks if is_parquet(path) else _csv_chunks
            for chunk in read(path, self.header, self.columns, wanted):
                rows += len(chunk)
                yield chunk
        if not self.counted:
            self.counted.append(rows)

    def n_rows(self) -> int:
        """The data rows of every file: counted by the first pass that read them all, or
        by a pass over one column now."""
        if not self.counted:
            for _ in self.chunks(self.columns[:1]):
                pass
        return self.counted[0]


def _describe(layout: list[str], header: bool) -> str:
    return f"({', '.join(layout)})" if header else ""


def _file_columns(path: Path, header: bool) -> list[str]:
    """A file's column names (a header's, or "0", "1", ...), from its first record or
    Parquet schema."""
    if is_parquet(path):
        try:
            schema = pq.read_schema(path)
        except (pa.ArrowException, OSError) as e:
            raise unreadable_parquet(path, e) from None
        check_flat(path, schema)
        names = _parquet_columns(schema)
        return names if header else [str(i) for i in range(len(names))]
    return csv_columns(path, header)


def _parquet_columns(schema: pa.Schema) -> list[str]:
    """A Parquet file's data columns: without the index columns pandas' `to_parquet`
    stores (`__index_level_0__`, a named index), which the whole-file reader drops too."""
    index = (schema.pandas_metadata or {}).get("index_columns", [])
    stored = {c for c in index if isinstance(c, str)}  # a RangeIndex is metadata only
    return [str(n) for n in schema.names if n not in stored]


def _indexed(frame: pd.DataFrame, path: Path, first_line: int) -> pd.DataFrame:
    lines = range(first_line, first_line + len(frame))
    frame.index = pd.MultiIndex.from_arrays(
        [[path.name] * len(frame), lines], names=["file", "line"]
    )
    return frame


def _parquet_chunks(
    path: Path, header: bool, columns: list[str], wanted: list[str]
) -> Iterator[pd.DataFrame]:
    try:
        parquet = pq.ParquetFile(path)
        names = _parquet_columns(parquet.schema_arrow)
        read = wanted if header else [names[int(c)] for c in wanted]
        line = 1
        for batch in parquet.iter_batches(batch_size=CHUNK_ROWS, columns=read):
            frame = parquet_frame(batch)
            frame.columns = wanted
            yield _indexed(frame, path, line)
            line += len(frame)
    except (pa.ArrowException, OSError) as e:
        raise unreadable_parquet(path, e) from None


def _csv_chunks(
    path: Path, header: bool, columns: list[str], wanted: list[str]
) -> Iterator[pd.DataFrame]:
    """CSV records as text; a record with another number of fields than the header (or
    the first record) raises a UserError naming its line, as `formats.parse_csv` does."""
    compression = "gzip" if is_gzip(path) else None
    bad_rows: list[pacsv.InvalidRow] = []
    line = 2 if header else 1
    try:
        reader = pacsv.open_csv(
            pa.input_stream(str(path), compression=compression),
            **csv_options(columns, 1 if header else 0, bad_rows, include=wanted),
        )
        for batch in reader:
            if bad_rows:
                for _ in reader:  # count every bad row of the file before reporting
                    pass
                raise _ragged(path, bad_rows, len(columns))
            for start in range(0, batch.num_rows, CHUNK_ROWS):
                frame = batch.slice(start, CHUNK_ROWS).to_pandas()
                yield _indexed(frame, path, line)
                line += len(frame)
        if bad_rows:
            raise _ragged(path, bad_rows, len(columns))
    except pa.ArrowException as e:
        if compression is not None and isinstance(e, GZIP_ERRORS):
            raise damaged_gzip(path, e) from None
        raise UserError(f"File {path}, line ?: cannot parse the CSV: {csv_advice(e)}") from None
    except GZIP_ERRORS as e:
        if compression is None:
            raise
        raise damaged_gzip(path, e) from None


def _ragged(path: Path, bad_rows: list[pacsv.InvalidRow], n_columns: int) -> UserError:
    return ragged_rows(bad_rows, n_columns, lambda line: f"File {path}, line {line}")


@dataclass(frozen=True)
class Channel:
    """A channel's files, where its features and target are, and its feature names."""

    files: ChannelFiles
    feature_columns: list[str]  # file columns
    names: list[str]  # feature names
    target_column: str | None  # file column (None: unlabeled)
    categorical: list[str] | None  # from categorical_index.json

    def features(self, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
        """Chunks of feature columns, named by the feature names."""
        wanted = columns or self.names
        by_name = dict(zip(self.names, self.feature_columns, strict=True))
        for chunk in self.files.chunks([by_name[n] for n in wanted]):
            chunk.columns = wanted
            yield chunk

    def targets(self) -> Iterator[pd.Series]:
        for chunk in self.files.chunks([self.target_column]):
            yield chunk.iloc[:, 0]


def labelled_channel(directory: Path, target_column: str) -> Channel:
    """A labelled channel (training or validation): target named or in column 0."""
    header = bool(target_column)
    files = ChannelFiles.open(directory, header)
    columns = files.columns
    if header:
        if target_column not in columns:
            raise UserError(
                f"Target column '{target_column}' (hyperparameter target_column) is not in "
                f"the header of the files in {directory}. Columns found: "
                f"{', '.join(columns)}."
            )
        feature_columns = [c for c in columns if c != target_column]
        names, target = feature_columns, target_column
    else:
        if len(columns) < 2:
            raise UserError(
                f"Files in {directory} have a single column: the JumpStart layout needs the "
                "target in column 0 followed by at least one feature column."
            )
        feature_columns, target = columns[1:], columns[0]
        names = headerless_names(len(feature_columns))
    target_index = columns.index(target)
    cat_index = read_categorical_index(directory, len(columns), target_index)
    categorical = None
    if cat_index is not None:
        categorical = [columns[i] if header else f"c{i}" for i in cat_index]
    return Channel(files, feature_columns, names, target, categorical)


def unlabeled_channel(directory: Path, header: bool, names: list[str] | None) -> Channel:
    """The `unlabeled` channel: the training features (`names`; None: the files')."""
    files = ChannelFiles.open(directory, header)
    found = files.columns if header else headerless_names(len(files.columns))
    names = names if names is not None else found
    if header:
        missing = [n for n in names if n not in found]
        if missing:
            raise UserError(
                f"Files in {directory} lack the feature column(s) {missing} that the "
                "training data has."
            )
        columns = names
        cat_index = read_categorical_index(directory, len(names), target_index=-1)
        categorical = [names[i] for i in cat_index] if cat_index is not None else None
    else:
        if len(found) != len(names):
            raise UserError(
                f"Files in {directory} have {len(found)} columns but the training data has "
                f"{len(names)} feature columns: unlabeled rows hold the features only, in "
                "the same order, without the target."
            )
        columns = files.columns
        cat_index = read_categorical_index(directory, len(names) + 1, target_index=0)
        categorical = [f"c{i}" for i in cat_index] if cat_index is not None else None
    return Channel(files, columns, names, None, categorical)

"""SageMaker input channels: their configuration (`validate_channels`) and reading them
into pandas tables, with errors that name the file.

Layouts accepted in a channel folder (`input/data/<channel>/`):
- CSV files directly in the folder, or in a `train/` / `training/` / `validation/` subfolder;
  several files are concatenated in name order;
- gzip-compressed CSV (detected by content, not by name) and Parquet (likewise);
- without a header row (JumpStart layout: target in column 0) or, when the
  `target_column` hyperparameter is set, with a header row naming the columns;
- an optional `categorical_index.json` `{"cat_index_list": [1, 4]}` naming the
  categorical columns by their index in the file (the target is column 0);
- symbolic links that stay inside the channel folder (one that resolves outside it is
  refused, `inside_channel`).

Every table comes back with a `(file, line)` MultiIndex so that later checks can name the
file and line of a bad value.
"""

from __future__ import annotations

import csv
import gzip
import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tabtransformer.errors import UserError
from tabtransformer.paths import SageMakerPaths

CATEGORICAL_INDEX_FILE = "categorical_index.json"
SUBFOLDERS = ("train", "training", "validation", "unlabeled")
GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"
# The longest CSV row (record) read, in bytes: pyarrow parses in blocks of this size, and
# a row must fit in one block.
MAX_ROW_BYTES = 16 * 1024 * 1024
KNOWN_CHANNELS = ("training", "validation", "unlabeled", "model")
# pandas dtypes for Parquet types whose default conversion depends on the rows read.
PARQUET_PANDAS_TYPES = {pa.bool_(): pd.BooleanDtype()}
CONTENT_TYPES = (
    "text/csv",
    "application/x-csv",
    "application/csv",
    "application/x-parquet",
    "application/parquet",
    "application/octet-stream",
)


def read_json_config(path: Path, default: Any) -> Any:
    """Read a SageMaker config file; a missing file gives `default`."""
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text())
    except (ValueError, RecursionError) as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None


def validate_channels(paths: SageMakerPaths) -> set[str]:
    """Check channel names, content types and input mode; return the channels present."""
    config = read_json_config(paths.input_data_config, {})
    present = (
        set(config)
        if config
        else (
            {p.name for p in paths.data.iterdir() if p.is_dir()} if paths.data.is_dir() else set()
        )
    )
    unknown = sorted(present - set(KNOWN_CHANNELS))
    if unknown:
        raise UserError(
            f"Unknown channel(s) {unknown}. This algorithm reads the channels "
            f"{', '.join(KNOWN_CHANNELS)}."
        )
    for name, spec in config.items():
        mode = spec.get("TrainingInputMode", "File")
        if mode not in ("File", "FastFile"):
            raise UserError(
                f"Channel '{name}' uses TrainingInputMode={mode}; use File or FastFile."
            )
        content_type = spec.get("ContentType", "text/csv").split(";")[0].strip().lower()
        if name != "model" and content_type not in CONTENT_TYPES:
            raise UserError(
                f"Channel '{name}' has ContentType={spec['ContentType']}; "
                f"supported: {', '.join(CONTENT_TYPES[:2])} (CSV, optionally "
                "gzip) and application/x-parquet."
            )
    if "training" not in present and "unlabeled" not in present:
        raise UserError(
            "The 'training' channel is required (labelled rows with the target in column 0, "
            "or named by the target_column hyperparameter), unless the job only pretrains "
            "on an 'unlabeled' channel."
        )
    return present


@dataclass
class LabelledTable:
    """Features and target of a labelled channel; both indexed by (file, line)."""

    features: pd.DataFrame
    target: pd.Series
    categorical_columns: list[str] | None  # from categorical_index.json, else None


def headerless_names(n_features: int) -> list[str]:
    """Feature names of a table without header: `c<i>` for file column i (target is 0)."""
    return [f"c{i}" for i in range(1, n_features + 1)]


def inside_channel(path: Path, directory: Path) -> Path:
    """`path`, an entry of the channel folder `directory`; a UserError when it resolves
    (through symbolic links) to a place outside that folder."""
    target, root = path.resolve(), directory.resolve()
    if not target.is_relative_to(root):
        raise UserError(
            f"Channel entry {path} is a link to {target}, outside the channel folder "
            f"{directory}: a channel reads only what is inside its folder. Copy the file "
            "into the channel, or point the link at a file inside it."
        )
    return path


def channel_files(directory: Path) -> list[Path]:
    """The data files of a channel, in name order; raise UserError when there are none, or
    when one (or a subfolder) is a link to a place outside the channel folder. Every reader
    (whole or streamed, of every channel) lists its files here."""
    if not directory.is_dir():
        raise UserError(f"Channel folder {directory} does not exist.")
    candidates = [directory] + [
        inside_channel(directory / s, directory) for s in SUBFOLDERS if (directory / s).is_dir()
    ]
    files = sorted(
        inside_channel(path, directory)
        for folder in candidates
        for path in folder.iterdir()
        if path.is_file()
        and not path.name.startswith((".", "_"))
        and not path.name.endswith((".json", ".manifest"))
    )
    if not files:
        raise UserError(
            f"Channel folder {directory} has no data files. Put CSV (optionally gzip) or "
            "Parquet files directly in it or in a train/ or training/ subfolder."
        )
    return files


def read_categorical_index(
    directory: Path, n_file_columns: int, target_index: int
) -> list[int] | None:
    """File-column indexes from `categorical_index.json`, validated, or None if absent."""
    found = [
        p
        for p in [directory, *(directory / s for s in SUBFOLDERS)]
        if (p / CATEGORICAL_INDEX_FILE).is_file()
    ]
    if not found:
        return None
    path = inside_channel(found[0] / CATEGORICAL_INDEX_FILE, directory)
    try:
        content = json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise UserError(
            f'{path} is not valid JSON ({e}). Expected {{"cat_index_list": [1, 4, ...]}}.'
        ) from None
    indexes = content.get("cat_index_list") if isinstance(content, dict) else None
    if not isinstance(indexes, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in indexes
    ):
        raise UserError(
            f'{path} must be {{"cat_index_list": [1, 4, ...]}}: a list of '
            f"integer column indexes; got {json.dumps(content)[:200]}."
        )
    bad = [i for i in indexes if not 0 <= i < n_file_columns or i == target_index]
    if bad:
        raise UserError(
            f"{path} lists column index(es) {bad} that are not feature columns: indexes must "
            f"be between 0 and {n_file_columns - 1} and not {target_index}, the target's "
            "column."
        )
    return sorted(set(indexes))


def _first_record(path: Path) -> list[str] | None:
    """The fields of the first CSV record (a header may span lines inside quotes); None
    when the file is empty. A UTF-8 byte-order mark is dropped."""
    compressed = _magic(path, 2) == GZIP_MAGIC
    opener = gzip.open if compressed else open
    csv.field_size_limit(max(csv.field_size_limit(), MAX_ROW_BYTES))
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig", errors="replace") as f:
            return next(csv.reader(f), None)
    except csv.Error as e:
        raise UserError(f"File {path}, line 1: cannot parse the CSV: {_csv_advice(e)}") from None
    except GZIP_ERRORS as e:
        if not compressed:
            raise
        raise _damaged_gzip(path, e) from None


def separator_advice(directory: Path) -> str:
    """A sentence for errors that a CSV with another separator explains: when the first
    line of the channel's first CSV file holds ';' or tab characters ("" otherwise)."""
    path = channel_files(directory)[0]
    if _magic(path, 4) == PARQUET_MAGIC:
        return ""
    opener = gzip.open if _magic(path, 2) == GZIP_MAGIC else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig", errors="replace") as f:
            line = f.readline(64 * 1024)
    except GZIP_ERRORS:
        return ""
    found = [name for char, name in ((";", "';'"), ("\t", "tab")) if char in line]
    if not found:
        return ""
    return (
        f" The first line of {path} holds {' and '.join(found)} characters: the file may "
        "use another separator, and this algorithm reads comma-separated CSV only (cells "
        "with decimal commas then split in two). Save it with commas as separators and "
        "decimal points, or as Parquet."
    )


# What a truncated or damaged gzip stream raises (Python's gzip, and pyarrow's).
GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, OSError)


def _damaged_gzip(path: Path, error: BaseException) -> UserError:
    return UserError(
        f"File {path} is a truncated or damaged gzip file ({error}). Upload it again, or "
        "check it with `gzip -t`."
    )


def _magic(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


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


def read_file(path: Path, header: bool) -> pd.DataFrame:
    """Read one CSV/gzip/Parquet file as strings (Parquet keeps its types).

    Returns a frame indexed by the 1-based line number in the file (header counted).
    Without a header, columns are named by their 0-based file index ("0", "1", ...).
    """
    if _magic(path, 4) == PARQUET_MAGIC:
        try:
            table = pq.read_table(path)
            _check_flat(path, table.schema)
            frame = parquet_frame(table)
        except (pa.ArrowException, OSError) as e:
            raise UserError(f"Cannot read Parquet file {path}: {e}") from None
        if not header:
            frame.columns = [str(i) for i in range(frame.shape[1])]
        frame.index = pd.RangeIndex(1, len(frame) + 1, name="line")
        return frame
    names = csv_columns(path, header)
    compression = "gzip" if _magic(path, 2) == GZIP_MAGIC else None
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
        raise _damaged_gzip(path, e) from None
    start = 2 if header else 1
    frame.index = pd.RangeIndex(start, start + len(frame), name="line")
    return frame


def parquet_frame(data: pa.Table | pa.RecordBatch) -> pd.DataFrame:
    """Parquet data as pandas, each column's dtype decided by its Parquet type alone (not
    by which rows were read): booleans become pandas' nullable "boolean" (without it, a
    read holding a null gives Python objects and one without gives numpy bool, which the
    column-kind detection tells apart), so whole and streamed reads agree."""
    return data.to_pandas(types_mapper=PARQUET_PANDAS_TYPES.get)


def parse_csv(
    source: pa.NativeFile, names: list[str], skip_rows: int, locate: Callable[[int | str], str]
) -> pd.DataFrame:
    """Parse CSV into a frame of strings (empty and NA-like cells are missing).

    Every row must have `len(names)` fields; the first that does not raises a UserError
    that `locate(line_number)` places ("File x.csv, line 7" or "row 7").
    """
    bad_rows: list[pacsv.InvalidRow] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad_rows.append(row)
        return "skip"

    try:
        table = pacsv.read_csv(
            source,
            read_options=pacsv.ReadOptions(
                column_names=names,
                skip_rows_after_names=skip_rows,  # records, not lines: a header may span lines
                use_threads=False,
                block_size=MAX_ROW_BYTES,
            ),
            parse_options=pacsv.ParseOptions(
                invalid_row_handler=on_invalid, newlines_in_values=True
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, strings_can_be_null=True
            ),
        )
    except pa.ArrowException as e:
        raise UserError(f"{locate('?')}: cannot parse the CSV: {_csv_advice(e)}") from None
    if bad_rows:
        row = bad_rows[0]
        raise UserError(
            f"{locate(row.number if row.number is not None else '?')}: expected "
            f"{row.expected_columns} columns but found {row.actual_columns} "
            f"({len(bad_rows)} such row(s)). Every row must have {len(names)} columns. "
            f"Row text: {row.text[:200]!r}"
        )
    return table.to_pandas()


def _csv_advice(error: Exception) -> str:
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


def _check_flat(path: Path, schema: pa.Schema) -> None:
    """Parquet columns must be flat: numbers, text, booleans, dates (not lists or structs)."""
    for field in schema:
        if pa.types.is_nested(field.type):
            raise UserError(
                f"Parquet file {path}: column '{field.name}' has the nested type "
                f"{field.type}; every column must hold single values (numbers, text, "
                "booleans or dates). Flatten it first."
            )


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


def read_unlabeled(
    directory: Path, header: bool, feature_names: list[str] | None
) -> tuple[pd.DataFrame, list[str] | None]:
    """Read the `unlabeled` channel: feature columns only, in training order.

    `feature_names` are the training features the rows must match; None (a pretraining-only
    job) takes them from the files. Returns the features and, when the channel has a
    `categorical_index.json` (numbered as in training files, target = column 0), the
    categorical column names.
    """
    table = read_files(channel_files(directory), header)
    if not header:
        table.columns = headerless_names(table.shape[1])
    names = feature_names if feature_names is not None else list(table.columns)
    if header:
        missing = [n for n in names if n not in table.columns]
        if missing:
            raise UserError(
                f"Files in {directory} lack the feature column(s) {missing} that the "
                "training data has."
            )
        table = table[names]
    elif table.shape[1] != len(names):
        raise UserError(
            f"Files in {directory} have {table.shape[1]} columns but the training data has "
            f"{len(names)} feature columns: unlabeled rows hold the features only, in the "
            "same order, without the target."
        )
    if header:
        cat_index = read_categorical_index(directory, len(names), target_index=-1)
        categorical = [names[i] for i in cat_index] if cat_index is not None else None
    else:
        cat_index = read_categorical_index(directory, len(names) + 1, target_index=0)
        categorical = [f"c{i}" for i in cat_index] if cat_index is not None else None
    return table, categorical

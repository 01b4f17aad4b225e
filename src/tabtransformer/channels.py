"""SageMaker input channels: their configuration (`validate_channels`) and layout: which
files a channel holds (`channel_files`), its categorical columns, its feature names.
`streaming` reads the files (their formats: `formats`), with errors that name the file.

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
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from tabtransformer.errors import UserError
from tabtransformer.formats import GZIP_ERRORS, is_gzip, is_parquet
from tabtransformer.paths import SageMakerPaths

CATEGORICAL_INDEX_FILE = "categorical_index.json"
SUBFOLDERS = ("train", "training", "validation", "unlabeled")
KNOWN_CHANNELS = ("training", "validation", "unlabeled", "model")
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


def separator_advice(directory: Path) -> str:
    """A sentence for errors that a CSV with another separator explains: when the first
    line of the channel's first CSV file holds ';' or tab characters ("" otherwise)."""
    path = channel_files(directory)[0]
    if is_parquet(path):
        return ""
    opener = gzip.open if is_gzip(path) else open
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

"""Training fails as a user error, or trains the same, where it used to crash, hang, or
depend on how a file is read: fewer rows than processes, too many text classes, Parquet
booleans with nulls in some row groups, and channel links that lead outside the channel.

The contracts are checked through the real `train` entry point (a subprocess over a
SAGEMAKER_BASE_DIR tree); the readers' agreement also as a property over row-group layouts
and chunk sizes.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FAST, Job, free_port, make_table
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_readers import read_labelled
from test_distributed import start

from tabtransformer import streaming
from tabtransformer.distributed import World
from tabtransformer.errors import USER_ERROR_EXIT_CODE, UserError
from tabtransformer.host_store import HostStore
from tabtransformer.paths import SageMakerPaths
from tabtransformer.preprocessing import TablePreprocessor, TargetEncoder
from tabtransformer.streaming import labelled_channel
from tabtransformer.tables import TableSettings, encode_into, load_tables, statistics

ONE_EPOCH = {**FAST, "n_epochs": "1"}


def train_processes(job: Job, processes: int) -> subprocess.CompletedProcess:
    """The `train` entry point with `processes` gloo processes on this host; a hang fails."""
    process = start(
        job,
        PROCESSES_PER_HOST=str(processes),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
    )
    try:
        output = process.communicate(timeout=240)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        output = process.communicate()[0]
        pytest.fail(f"train hung with {processes} processes:\n{output}")
    return subprocess.CompletedProcess(process.args, process.returncode, output, "")


def two_rows() -> pd.DataFrame:
    """Two rows of `make_table`, one of each class."""
    table = make_table("binary", n=40)
    return pd.concat([table[table.label == "yes"].head(1), table[table.label == "no"].head(1)])


def client_error(job: Job, result: subprocess.CompletedProcess) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == USER_ERROR_EXIT_CODE, output
    assert job.failure.startswith("ClientError: "), job.failure
    return job.failure


# --- 1. fewer rows than processes ------------------------------------------------------


@pytest.mark.slow
def test_fewer_training_rows_than_processes_is_a_user_error(job: Job):
    """2 processes, 2 rows (1 after the hold-out): a ClientError naming both counts."""
    job.channel("training", two_rows())
    job.hyperparameters(ONE_EPOCH)
    failure = client_error(job, train_processes(job, 2))
    assert "holds 1 training row(s) (after 1 held out for validation)" in failure
    assert "fewer than the 2 training processes" in failure
    assert "ZeroDivisionError" not in failure


@pytest.mark.slow
def test_fewer_training_rows_than_processes_with_a_validation_channel_is_a_user_error(job: Job):
    """3 processes, 2 training rows and a validation channel: every rank stops, none hangs."""
    job.channel("training", two_rows())
    job.channel("validation", make_table("binary", n=20, seed=1))
    job.hyperparameters(ONE_EPOCH)
    failure = client_error(job, train_processes(job, 3))
    assert "holds 2 training row(s), fewer than the 3 training processes" in failure


@pytest.mark.slow
def test_fewer_pretraining_rows_than_processes_is_a_user_error(job: Job):
    """A pretraining-only job on 2 unlabeled rows with 2 processes (1 left after the
    early-stopping hold-out): a ClientError naming the rows and processes."""
    job.channel("unlabeled", two_rows().drop(columns="label"))
    job.hyperparameters({**ONE_EPOCH, "pretrain_epochs": "1"})
    failure = client_error(job, train_processes(job, 2))
    assert "Pretraining has 2 feature row(s)" in failure
    assert "1 remain, fewer than the 2 training process(es)" in failure


# --- 2. text targets beyond max_classes ------------------------------------------------


def semicolon_rows(separator: str, n: int = 30) -> str:
    """A `separator`-separated table with decimal commas (target first): read with
    commas, its target column is text such as '7;1'."""
    return "".join(f"{i}{separator}{i % 5},{i % 3}{separator}{i * 2},25\n" for i in range(n))


@pytest.mark.slow
@pytest.mark.parametrize("separator, named", [(";", "';'"), ("\t", "tab")])
def test_text_target_beyond_max_classes_suggests_task_and_separator(
    job: Job, separator: str, named: str
):
    """30 distinct text labels (a ';' or tab file read as commas): a ClientError that
    names the count, shows labels, and suggests task and the separator."""
    folder = job.data / "training"
    folder.mkdir(parents=True)
    (folder / "data.csv").write_text(semicolon_rows(separator))
    job.hyperparameters(ONE_EPOCH)
    failure = client_error(job, job.train())
    assert "The target (column 0) has 30 distinct text labels" in failure
    assert f"'0{separator}0'" in failure.replace("\\t", "\t")  # an example label
    assert "max_classes=20" in failure and "task=regression" in failure
    assert f"data.csv holds {named} characters" in failure
    assert "another separator" in failure


@pytest.mark.slow
def test_text_target_beyond_max_classes_without_separator_hint(job: Job):
    """Plain comma-separated text labels beyond max_classes: refused, no separator hint."""
    table = make_table("binary", n=40)
    table["label"] = [f"user{i}" for i in range(40)]
    job.channel("training", table)
    job.hyperparameters(ONE_EPOCH)
    failure = client_error(job, job.train())
    assert "has 40 distinct text labels" in failure and "'user0'" in failure
    assert "separator" not in failure


def test_text_labels_beyond_max_classes_are_refused_chunk_by_chunk(tmp_path: Path, monkeypatch):
    """The streamed reader (chunks of 7 rows) refuses them as the whole-table fit does;
    an explicit task=multiclass keeps them all as classes."""
    monkeypatch.setattr(streaming, "CHUNK_ROWS", 7)
    folder = tmp_path / "input" / "data" / "training"
    folder.mkdir(parents=True)
    (folder / "data.csv").write_text(semicolon_rows(";"))
    paths = SageMakerPaths(tmp_path)
    with pytest.raises(UserError, match=r"30 distinct text labels.*';' characters"):
        load_tables(
            paths, TableSettings(), None, World(), tmp_path / "scratch",
        )  # fmt: skip
    whole = read_labelled(folder, "")
    with pytest.raises(UserError, match=r"30 distinct text labels.*task=multiclass"):
        TargetEncoder.fit(whole.target, "auto", 20)
    assert len(TargetEncoder.fit(whole.target, "multiclass", 20).classes) == 30


# --- 3. Parquet booleans with nulls in some row groups ---------------------------------

SCHEMA = pa.schema(
    [("label", pa.string()), ("flag", pa.bool_()), ("count", pa.int64()), ("name", pa.string())]
)


def parquet_rows(flags: list[bool | None], seed: int = 0) -> pa.Table:
    """A labelled table around the boolean column `flag`; other columns with nulls too."""
    rng = np.random.default_rng(seed)
    n = len(flags)
    counts = [None if rng.random() < 0.2 else int(v) for v in rng.integers(0, 9, n)]
    names = [None if rng.random() < 0.3 else str(v) for v in rng.choice(["a", "b"], n)]
    labels = ["yes" if (f is True) != (i % 3 == 0) else "no" for i, f in enumerate(flags)]
    return pa.table([labels, flags, counts, names], schema=SCHEMA)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    flags=st.lists(st.sampled_from([True, False, None]), min_size=2, max_size=30),
    row_group=st.integers(1, 30),
    chunk_rows=st.integers(1, 30),
    split=st.integers(0, 30),
)
def test_streamed_and_whole_readers_type_parquet_columns_alike(
    flags: list[bool | None], row_group: int, chunk_rows: int, split: int
):
    """Whatever the row groups, files and chunk size: the same column kinds, vocabularies
    and encoded values from the streamed reader as from the whole-table reader."""
    table = parquet_rows(flags)
    split = min(split, len(flags) - 1)
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        patch.setattr(streaming, "CHUNK_ROWS", chunk_rows)
        folder = Path(tmp) / "training"
        folder.mkdir()
        pq.write_table(table.slice(0, split), folder / "a.parquet", row_group_size=row_group)
        pq.write_table(table.slice(split), folder / "b.parquet", row_group_size=row_group)
        whole = read_labelled(folder, "label")
        expected = TablePreprocessor.fit(whole.features, None)
        channel = labelled_channel(folder, "label")
        pre = statistics(channel, None, None).preprocessor()
        store = HostStore(Path(tmp) / "store")
        encode_into(store, "t", pre, [channel])
        codes, numbers = store.load("t_codes"), store.load("t_numbers")
    assert pre.schema == expected.schema and "flag" in pre.schema["categorical"]
    assert pre.to_dict() == expected.to_dict()
    expected_codes, expected_numbers = expected.transform(whole.features)
    assert np.array_equal(codes, expected_codes)
    np.testing.assert_array_equal(numbers, expected_numbers)


@pytest.mark.slow
def test_parquet_boolean_with_nulls_in_some_row_groups_trains_as_categorical(job: Job):
    """A boolean column with nulls in its second row group only is one categorical column
    (as without nulls), whatever the reader's chunks."""
    flags = [bool(i % 2) for i in range(60)]
    flags[25], flags[31] = None, None  # row groups of 20 rows: nulls in the second only
    folder = job.data / "training"
    folder.mkdir(parents=True)
    pq.write_table(parquet_rows(flags), folder / "data.parquet", row_group_size=20)
    job.hyperparameters({**ONE_EPOCH, "target_column": "label"})
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    features = json.loads((job.model / "preprocessing.json").read_text())["features"]
    categorical = {c["name"]: c["categories"] for c in features["categorical"]}
    assert sorted(categorical["flag"]) == ["false", "true"]
    assert "flag" not in [c["name"] for c in features["numeric"]]


# --- 4. links inside a channel ---------------------------------------------------------


def linked_job(job: Job, channel: str, target: Path, name: str = "extra.csv") -> Path:
    """A training job with a link `name` in `channel` that points to `target`."""
    table = make_table("binary", n=40)
    job.channel("training", table)
    if channel == "validation":
        job.channel("validation", make_table("binary", n=20, seed=1))
    if channel == "unlabeled":
        job.channel("unlabeled", table.drop(columns="label"))
    link = job.data / channel / name
    os.symlink(target, link)
    job.hyperparameters(ONE_EPOCH)
    return link


@pytest.mark.slow
@pytest.mark.parametrize("channel", ["training", "validation", "unlabeled"])
def test_a_link_to_a_file_outside_the_channel_is_refused(job: Job, channel: str):
    """A link to /etc/passwd in any channel: a ClientError naming the link and its target,
    from the streamed reader of training and from the whole-table reader."""
    link = linked_job(job, channel, Path("/etc/passwd"))
    failure = client_error(job, job.train())
    assert f"Channel entry {link} is a link to /etc/passwd, outside the channel" in failure
    if channel != "unlabeled":
        with pytest.raises(UserError, match="is a link to /etc/passwd"):
            read_labelled(job.data / channel, "")


@pytest.mark.slow
def test_a_link_to_a_folder_outside_the_channel_is_refused(job: Job, tmp_path: Path):
    """A `train/` subfolder that links to a folder elsewhere: a ClientError naming it."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    make_table("binary", n=20).to_csv(outside / "more.csv", header=False, index=False)
    link = linked_job(job, "training", outside, name="train")
    failure = client_error(job, job.train())
    assert f"Channel entry {link} is a link to {outside}, outside the channel" in failure


@pytest.mark.slow
def test_a_link_that_stays_inside_the_channel_is_read(job: Job):
    """A link to a file in another folder of the same channel trains like the file."""
    table = make_table("binary", n=40)
    job.channel("training", table, subfolder="store", filename="rows.csv")
    os.symlink(Path("store") / "rows.csv", job.data / "training" / "data.csv")
    job.hyperparameters(ONE_EPOCH)
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "training channel: 40 rows" in result.stdout

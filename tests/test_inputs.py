"""Bad training inputs are user errors that name what is wrong: checked in-process.

Each case calls the function that reads or parses the input (hyperparameters.parse,
read_labelled, read_artifact, TablePreprocessor.fit, TargetEncoder.fit) and expects a
UserError whose message names the file, line, column or key. The `train` subprocess cases
at the end check that such errors reach the failure file as a ClientError.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FAST, Job, make_table
from reference_readers import read_labelled

from tabtransformer import hyperparameters
from tabtransformer.artifacts import read_artifact
from tabtransformer.errors import USER_ERROR_EXIT_CODE, UserError
from tabtransformer.preprocessing import TablePreprocessor, TargetEncoder, to_numbers

# --- hyperparameters.json -------------------------------------------------------------


@pytest.mark.parametrize("content", [[], ["n_epochs", 3], "n_epochs=3", None, 7])
def test_hyperparameters_file_must_be_an_object(content):
    with pytest.raises(UserError, match=r"hyperparameters\.json must be a JSON object"):
        hyperparameters.parse(content)


@pytest.mark.parametrize(
    "raw",
    [
        {"n_epochs": 10**400},
        {"n_epochs": str(10**400)},
        {"learning_rate": 10**400},
        {"batch_size": "1e400"},
    ],
)
def test_huge_numbers_are_out_of_range_not_a_crash(raw):
    key = next(iter(raw))
    with pytest.raises(UserError, match=f"'{key}'.*it must be") as error:
        hyperparameters.parse(raw)
    assert len(str(error.value)) < 400  # the value is shortened in the message


@pytest.mark.parametrize("value", [{"a": 1}, [1, 2], None, '{"a": 1}', "[1]"])
def test_string_hyperparameter_must_be_a_string(value):
    with pytest.raises(UserError, match=r"'target_column'.*a string"):
        hyperparameters.parse({"target_column": value})


@pytest.mark.parametrize("name", ["null", "true", "1e3", "007", '"churn"', "churn"])
def test_string_hyperparameter_keeps_the_text_sagemaker_passes(name):
    expected = json.loads(name) if name.startswith('"') else name
    assert hyperparameters.parse({"target_column": name})["target_column"] == expected


def test_numeric_hyperparameter_is_not_a_boolean():
    with pytest.raises(UserError, match="'n_epochs'"):
        hyperparameters.parse({"n_epochs": True})


# --- the model channel's model.tar.gz ---------------------------------------------------


def _model_tarball(folder: Path) -> bytes:
    """A real (untrained, tiny) artifact packed as SageMaker packs model.tar.gz."""
    from tabtransformer.artifacts import Artifact, save_artifact
    from tabtransformer.model import TabTransformer, TabTransformerConfig

    table = make_table("binary", n=40)
    pre = TablePreprocessor.fit(table.drop(columns="label"), None)
    target = TargetEncoder.fit(table["label"], "auto", 20)
    config = TabTransformerConfig(
        cardinalities=pre.cardinalities,
        n_continuous=len(pre.numeric),
        n_outputs=target.n_outputs,
        dim=8,
        n_blocks=1,
        n_heads=2,
    )
    model_dir = folder / "model"
    artifact = Artifact(TabTransformer(config), pre, target, False, {})
    save_artifact(model_dir, artifact, hyperparameters.defaults())
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(model_dir.iterdir()):
            tar.add(path, arcname=path.name)
    return buffer.getvalue()


def test_intact_model_tarball_is_read(tmp_path: Path):
    (tmp_path / "model.tar.gz").write_bytes(_model_tarball(tmp_path))
    assert read_artifact(tmp_path / "model.tar.gz").target.task == "binary"


@pytest.mark.parametrize("keep", [0.0, 0.001, 0.3, 0.6, 0.9])
def test_truncated_model_tarball_is_a_user_error(tmp_path: Path, keep: float):
    whole = _model_tarball(tmp_path)
    (tmp_path / "model.tar.gz").write_bytes(whole[: int(len(whole) * keep)])
    with pytest.raises(UserError, match=r"model\.tar\.gz") as error:
        read_artifact(tmp_path / "model.tar.gz")
    assert "/tmp" not in str(error.value).replace(str(tmp_path), "")  # no scratch folder


# --- channel files ------------------------------------------------------------------------


def _channel(tmp_path: Path, name: str, data: bytes) -> Path:
    folder = tmp_path / "training"
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(data)
    return folder


def _rows(n: int = 200) -> bytes:
    return b"".join(b"%d,red,%d.5\n" % (i % 2, i) for i in range(n))


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9])
def test_truncated_gzip_csv_is_a_user_error(tmp_path: Path, keep: float):
    whole = gzip.compress(_rows(5000))
    folder = _channel(tmp_path, "part.csv.gz", whole[: max(3, int(len(whole) * keep))])
    with pytest.raises(UserError, match=r"part\.csv\.gz is a truncated or damaged gzip"):
        read_labelled(folder, "")


@pytest.mark.parametrize("compress", [False, True])
def test_byte_order_mark_before_the_header_is_dropped(tmp_path: Path, compress: bool):
    data = "\ufeffchurn,colour,size\n".encode() + _rows()
    folder = _channel(tmp_path, "data.csv", gzip.compress(data) if compress else data)
    table = read_labelled(folder, "churn")
    assert list(table.features.columns) == ["colour", "size"]
    assert len(table.target) == 200


def test_byte_order_mark_in_a_headerless_file_is_dropped(tmp_path: Path):
    folder = _channel(tmp_path, "data.csv", "\ufeff".encode() + _rows())
    assert read_labelled(folder, "").target.iloc[0] == "0"


def test_fields_over_a_megabyte_are_read(tmp_path: Path):
    long_text = "x" * 3_000_000
    folder = _channel(tmp_path, "data.csv", f"label,text\n1,{long_text}\n0,short\n".encode())
    table = read_labelled(folder, "label")
    assert table.features["text"].tolist() == [long_text, "short"]


def test_unclosed_quote_says_what_to_check(tmp_path: Path):
    folder = _channel(tmp_path, "data.csv", b'1,"open\n' + b"0,x\n" * 10 + b"1,y" * 6_000_000)
    with pytest.raises(UserError, match=r"data\.csv.*longer than 16 MiB.*quot"):
        read_labelled(folder, "")


def test_quoted_newlines_in_the_header_and_rows(tmp_path: Path):
    data = b'label,"two\nlines"\n1,"a\nb"\n0,c\n'
    table = read_labelled(_channel(tmp_path, "data.csv", data), "label")
    assert table.features["two\nlines"].tolist() == ["a\nb", "c"]


# pyarrow cannot decode the text of a binary row for the invalid-row handler; it reports
# that as "Exception ignored" and then fails the parse, which is the error checked here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(
    "data, words",
    [
        (bytes(range(256)) * 8, ["data.csv", "cannot parse the CSV"]),
        ("1,café\n0,thé\n".encode("latin-1"), ["data.csv", "UTF-8"]),
        (b"\n\n", ["data.csv", "empty"]),
    ],
)
def test_unreadable_text_is_a_user_error(tmp_path: Path, data: bytes, words: list[str]):
    with pytest.raises(UserError) as error:
        read_labelled(_channel(tmp_path, "data.csv", data), "")
    for word in words:
        assert word in str(error.value)


def test_nested_parquet_columns_are_refused(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "training"
    folder.mkdir()
    table = pa.table({"label": [0, 1], "tags": [[1, 2], [3]], "x": [1.0, 2.0]})
    pq.write_table(table, folder / "data.parquet")
    with pytest.raises(UserError, match=r"data\.parquet: column 'tags' has the nested type"):
        read_labelled(folder, "label")


def test_a_folder_named_like_a_file_is_not_read(tmp_path: Path):
    folder = _channel(tmp_path, "data.csv", _rows())
    (folder / "more.csv").mkdir()
    assert len(read_labelled(folder, "").target) == 200


@pytest.mark.parametrize(
    "content, words",
    [
        ("\ufeff" + '{"cat_index_list": [1]}', None),  # a BOM is fine
        ('{"cat_index_list": [1e400]}', ["integer column indexes"]),
        ('{"cat_index_list": [' + "9" * 500 + "]}", ["not feature columns"]),
        ("[" * 100_000 + "]" * 100_000, ["not valid JSON"]),
        ('{"cat_index_list": null}', ["integer column indexes"]),
        ('{"cat_index_list": [true]}', ["integer column indexes"]),
    ],
)
def test_categorical_index_edge_cases(tmp_path: Path, content: str, words: list[str] | None):
    folder = _channel(tmp_path, "data.csv", _rows())
    (folder / "categorical_index.json").write_text(content, encoding="utf-8")
    if words is None:
        assert read_labelled(folder, "").categorical_columns == ["c1"]
        return
    with pytest.raises(UserError) as error:
        read_labelled(folder, "")
    message = str(error.value)
    assert "categorical_index.json" in message and len(message) < 1000
    for word in words:
        assert word in message


# --- numbers at the edges -----------------------------------------------------------------


def _labelled(tmp_path: Path, lines: list[str]) -> tuple[pd.DataFrame, pd.Series]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    folder = _channel(tmp_path, "data.csv", ("y,x,colour\n" + "\n".join(lines) + "\n").encode())
    table = read_labelled(folder, "y")
    return table.features, table.target


def _regression_lines(n: int = 30) -> list[str]:
    return [f"{i * 1.5},{i % 7},{'ab'[i % 2]}" for i in range(n)]


@pytest.mark.parametrize("bad", ["inf", "-inf", "Infinity", "1e400", "1" * 400, "1e200", "-1e151"])
def test_non_finite_or_overflowing_feature_is_refused_in_training(tmp_path: Path, bad: str):
    lines = _regression_lines()
    lines[4] = f"3.0,{bad},a"
    features, _ = _labelled(tmp_path, lines)
    message = r"file data\.csv, line 6, column 'x': .* must be finite and at most 1e\+150"
    with pytest.raises(UserError, match=message):
        TablePreprocessor.fit(features, None)


def test_extreme_but_finite_features_give_finite_quantiles(tmp_path: Path):
    lines = _regression_lines()
    lines[0], lines[1] = "1,1e150,a", "2,-1e150,b"
    features, _ = _labelled(tmp_path, lines)
    pre = TablePreprocessor.fit(features, None)
    assert all(np.isfinite(q) for col in pre.numeric for q in col.quantiles)
    assert np.isfinite(pre.transform(features)[1]).all()


@pytest.mark.parametrize("bad", ["inf", "-inf", "1e308", "-1e308", "1e200", "9" * 400])
def test_non_finite_or_overflowing_regression_target_is_refused(tmp_path: Path, bad: str):
    lines = _regression_lines()
    lines[7] = f"{bad},1,a"
    _, target = _labelled(tmp_path, lines)
    for task in ("auto", "regression"):
        with pytest.raises(UserError, match=r"file data\.csv, line 9, column 'y'"):
            TargetEncoder.fit(target, task, 20)


def test_overflowing_target_in_validation_is_refused(tmp_path: Path):
    _, target = _labelled(tmp_path, _regression_lines())
    encoder = TargetEncoder.fit(target, "regression", 20)
    lines = _regression_lines()
    lines[2] = "1e300,1,a"
    _, valid = _labelled(tmp_path / "v", lines)
    with pytest.raises(UserError, match=r"line 4, column 'y'"):
        encoder.encode(valid)


def test_standardised_target_is_finite_at_the_edges(tmp_path: Path):
    lines = _regression_lines()
    lines[0], lines[1] = "1e150,1,a", "-1e150,2,b"
    _, target = _labelled(tmp_path, lines)
    encoder = TargetEncoder.fit(target, "regression", 20)
    assert np.isfinite([encoder.mean, encoder.std]).all()
    assert np.isfinite(encoder.encode(target)).all()


@pytest.mark.parametrize("n_rows", [1])
def test_too_few_regression_rows_is_a_user_error(tmp_path: Path, n_rows: int):
    _, target = _labelled(tmp_path, _regression_lines(n_rows))
    with pytest.raises(UserError, match="at least 2"):
        TargetEncoder.fit(target, "auto", 20)


@pytest.mark.parametrize(
    "values, words",
    [
        ([1.0, float("inf")], ["row 2, column 'age'", "finite"]),
        (["1", "-Infinity"], ["row 2, column 'age'", "finite"]),
        ([1, 10**400], ["row 2, column 'age'", "finite"]),
        ([{"a": 1}, 2], ["row 1, column 'age'", "not a number"]),
    ],
)
def test_to_numbers_names_the_row_of_a_bad_request_value(values: list, words: list[str]):
    series = pd.Series(values, index=pd.RangeIndex(1, len(values) + 1), dtype=object)
    with pytest.raises(UserError) as error:
        to_numbers(series, "age")
    for word in words:
        assert word in str(error.value)


def test_to_numbers_keeps_missing_and_signed_zero():
    series = pd.Series([None, "-0", "1e-320", "5e-324", float("nan")], dtype=object)
    x = to_numbers(series, "v")
    assert np.isnan(x[0]) and np.isnan(x[4])
    assert x[1] == 0 and np.signbit(x[1]) and x[2] == 1e-320 and x[3] == 5e-324


# --- through the real `train` entry point ---------------------------------------------------


def _client_error(job: Job, *words: str) -> str:
    result = job.train()
    assert result.returncode == USER_ERROR_EXIT_CODE, result.stdout + result.stderr
    reason = job.failure
    assert reason.startswith("ClientError: "), reason
    assert "Traceback" not in reason and "Traceback" not in result.stdout + result.stderr
    for word in words:
        assert word in reason, reason
    return reason


@pytest.mark.parametrize(
    "target, words",
    [
        ("1e308", ["line 4", "column '0'", "out of range", "1e+150"]),
        ("-inf", ["line 4", "column '0'", "out of range"]),
    ],
)
def test_train_refuses_a_non_finite_or_overflowing_target(job: Job, target: str, words):
    table = make_table("regression", n=60).astype({"label": object})
    table.loc[3, "label"] = target
    job.channel("training", table)
    _client_error(job, "file data.csv", *words)


def test_train_refuses_an_infinite_feature(job: Job):
    table = make_table("binary", n=60).astype({"size": object})
    table.loc[10, "size"] = "inf"
    job.channel("training", table, header=True)
    job.hyperparameters({**FAST, "target_column": "label"})
    _client_error(job, "file data.csv, line 12, column 'size'", "out of range")


@pytest.mark.parametrize("content", ["[]", '"n_epochs=3"', "null"])
def test_train_refuses_a_hyperparameters_file_that_is_not_an_object(job: Job, content: str):
    job.channel("training", make_table("binary", n=60))
    (job.config / "hyperparameters.json").write_text(content)
    _client_error(job, "hyperparameters.json must be a JSON object")


def test_train_refuses_a_400_digit_hyperparameter(job: Job):
    job.channel("training", make_table("binary", n=60))
    (job.config / "hyperparameters.json").write_text('{"n_epochs": ' + "9" * 400 + "}")
    _client_error(job, "'n_epochs'", "[1, 100000]")


def test_train_refuses_a_structured_target_column(job: Job):
    job.channel("training", make_table("binary", n=60), header=True)
    job.hyperparameters({"target_column": {"a": 1}})
    _client_error(job, "'target_column'", "a string")


def test_train_refuses_a_truncated_gzip_csv(job: Job):
    path = job.channel("training", make_table("binary", n=2000))
    whole = gzip.compress(path.read_bytes())
    path.unlink()
    (path.parent / "data.csv.gz").write_bytes(whole[: len(whole) // 2])
    _client_error(job, "data.csv.gz is a truncated or damaged gzip file")


def test_train_refuses_a_truncated_model_tarball(job: Job, tmp_path: Path):
    job.channel("training", make_table("binary", n=60))
    whole = _model_tarball(tmp_path)
    (job.data / "model").mkdir(parents=True)
    (job.data / "model" / "model.tar.gz").write_bytes(whole[: len(whole) // 2])
    _client_error(job, "model.tar.gz is not a readable model.tar.gz", "truncated")


def test_train_refuses_a_single_regression_row(job: Job):
    job.channel("training", make_table("regression", n=60).head(1))
    _client_error(job, "1 labelled row(s)", "at least 2")


@pytest.mark.slow
def test_train_reads_a_header_with_a_byte_order_mark(job: Job):
    path = job.channel("training", make_table("binary", n=120), header=True)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    job.hyperparameters({**FAST, "n_epochs": "1", "target_column": "label"})
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr

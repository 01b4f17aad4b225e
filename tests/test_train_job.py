"""The training container contract: end to end through the real `train` entry point
(marked slow), and its user errors in process through `job.run`."""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys

import pandas as pd
import pytest
from conftest import FAST, REPO, Job, make_table

from tabtransformer import job as training_job
from tabtransformer import load_model
from tabtransformer.errors import (
    ALGORITHM_ERROR_EXIT_CODE,
    FAILURE_REASON_LIMIT,
    USER_ERROR_EXIT_CODE,
    UserError,
    failure_reason,
)
from tabtransformer.paths import SageMakerPaths


def trained(job: Job) -> dict:
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (job.base / "output" / "failure").exists()
    return {**json.loads((job.model / "metrics.json").read_text()), "log": result.stdout}


@pytest.mark.slow
def model_config(job: Job) -> dict:
    return json.loads((job.model / "model_config.json").read_text())


def test_binary_headerless_with_text_labels(job: Job):
    table = make_table("binary")
    job.channel("training", table)
    report = trained(job)
    assert report["task"] == "binary"
    assert model_config(job)["numeric_embedding"] == "periodic"  # the default, auto
    log = report["log"]
    assert "learning_rate=auto: 0.0003 for a binary task" in log
    assert "metrics={'f1': " in log and "metrics={'auc': " in log
    assert "epoch 1/4 train_loss=" in log and "rows/s=" in log and "time_left<=" in log
    predictor = load_model(job.model)
    assert predictor.classes == ["no", "yes"]
    probabilities = predictor.outputs(table.drop(columns="label").head(7))
    assert probabilities.shape == (7, 2)
    assert abs(probabilities.sum(axis=1) - 1).max() < 1e-9
    assert (job.base / "output" / "data" / "training_history.csv").is_file()
    assert (job.base / "output" / "data" / "training_history.png").stat().st_size > 10_000
    # Where the time went, stage by stage (the accuracy benchmark reads it).
    timings = json.loads((job.base / "output" / "data" / "timings.json").read_text())
    stages = ["start_up", "tables", "model", "fine_tuning", "artifact", "report"]
    assert all(timings[k] >= 0 for k in stages) and timings["fine_tuning_epochs"] == 4
    assert 0 < timings["fine_tuning_validation"] < timings["fine_tuning"]
    assert sum(timings[k] for k in stages) <= timings["total"] + 1e-6
    assert "time: start_up " in log and " report " in log


@pytest.mark.slow
def test_multiclass_with_integer_labels(job: Job):
    job.channel("training", make_table("multiclass", n=300))
    job.hyperparameters({**FAST, "n_epochs": "10"})
    report = trained(job)
    assert report["task"] == "multiclass"
    assert model_config(job)["numeric_embedding"] == "ple"  # the default, auto
    assert load_model(job.model).classes == [0, 1, 2]
    assert report["validation"]["accuracy"] > 0.5  # three classes: chance is about 0.33


@pytest.mark.slow
def test_regression_predicts_in_target_units(job: Job):
    table = make_table("regression", n=300)
    job.channel("training", table)
    job.hyperparameters({**FAST, "n_epochs": "10"})
    report = trained(job)
    assert report["task"] == "regression"
    assert model_config(job)["numeric_embedding"] == "ple"  # the default, auto
    assert "learning_rate=auto: 0.001 for a regression task" in report["log"]
    predictions = load_model(job.model).outputs(table.drop(columns="label"))
    assert predictions.shape == (300,)
    assert abs(predictions.mean() - table["label"].mean()) < 0.5 * table["label"].std()
    assert report["validation"]["r2"] > 0.2


@pytest.mark.slow
def test_header_csv_with_target_column_and_validation_channel(job: Job):
    table = make_table("binary")
    shuffled = table[["color", "label", "size", "shape", "weight"]]
    job.channel("training", shuffled.iloc[:180], header=True)
    job.channel("validation", shuffled.iloc[180:], header=True)
    job.hyperparameters({**FAST, "target_column": "label"})
    trained(job)
    predictor = load_model(job.model)
    assert predictor.feature_names == ["color", "size", "shape", "weight"]
    by_name = predictor.outputs(table[["weight", "shape", "size", "color"]].head(3))
    by_position = predictor.outputs(table[["color", "size", "shape", "weight"]].head(3))
    assert (by_name == by_position).all()


@pytest.mark.slow
def test_train_subfolder_several_files_and_categorical_index(job: Job):
    table = make_table("binary")
    job.channel("training", table.iloc[:120], subfolder="train", filename="part-0.csv")
    job.channel("training", table.iloc[120:], subfolder="train", filename="part-1.csv")
    # Column 3 ("size") holds numbers but is declared categorical.
    (job.data / "training" / "categorical_index.json").write_text('{"cat_index_list": [1, 3]}')
    trained(job)
    prep = json.loads((job.model / "preprocessing.json").read_text())["features"]
    assert [c["name"] for c in prep["categorical"]] == ["c1", "c3"]
    assert [c["name"] for c in prep["numeric"]] == ["c2", "c4"]


@pytest.mark.slow
def test_gzip_csv_and_parquet_are_read(job: Job, tmp_path):
    table = make_table("binary")
    path = job.channel("training", table.iloc[:120], filename="part-0")
    path.write_bytes(gzip.compress(path.read_bytes()))  # gzip detected by content
    job.channel("training", table.iloc[120:], filename="part-1.parquet")
    job.hyperparameters({**FAST, "n_epochs": "1"})
    trained(job)


@pytest.mark.slow
def test_json_encoded_hyperparameters_and_platform_keys(job: Job):
    job.channel("training", make_table("binary"))
    job.hyperparameters(
        {
            "n_epochs": '"2"',
            "n_blocks": '"1"',
            "learning_rate": '"0.002"',
            "input_dim": '"16"',
            "task": '"binary"',
            "sagemaker_program": '"x.py"',
            "_tuning_objective_metric": "auc",
        }
    )
    trained(job)
    used = json.loads((job.model / "hyperparameters.json").read_text())
    assert used["n_epochs"] == 2 and used["learning_rate"] == 0.002 and used["input_dim"] == 16


@pytest.mark.slow
def test_same_seed_same_model(job: Job, tmp_path):
    table = make_table("binary")
    job.channel("training", table)
    trained(job)
    first = load_model(job.model).outputs(table.drop(columns="label"))
    other = Job(tmp_path / "other")
    other.channel("training", table)
    trained(other)
    second = load_model(other.model).outputs(table.drop(columns="label"))
    assert (first == second).all()


@pytest.mark.slow
def test_model_without_categorical_or_without_numeric_columns(job: Job, tmp_path):
    table = make_table("binary")
    job.channel("training", table[["label", "size", "weight"]])
    trained(job)
    only_cats = Job(tmp_path / "cats")
    only_cats.channel("training", table[["label", "color", "shape"]])
    trained(only_cats)
    assert load_model(only_cats.model).outputs(table[["color", "shape"]]).shape == (240, 2)


# --- user errors: a short reason in output/failure, exit code 1, no traceback -------------


def failed(job: Job, *words: str) -> str:
    """Run the real entry point; it must fail as a user error whose reason has `words`."""
    result = job.train()
    assert result.returncode == USER_ERROR_EXIT_CODE, result.stdout + result.stderr
    reason = job.failure
    assert reason.startswith("ClientError: ")
    assert "Traceback" not in reason and len(reason) < 1024
    for word in words:
        assert word in reason, reason
    assert not list(job.model.glob("*")) if job.model.exists() else True
    return reason


@pytest.fixture(autouse=True)
def keep_sigterm_handler():
    """`job.run` installs its SIGTERM flag; the test process keeps its own handler."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def rejected(job: Job, *words: str) -> str:
    """Run the job in this process; it must raise a UserError whose message has `words`
    before anything is written to model/."""
    with pytest.raises(UserError) as error:
        training_job.run(SageMakerPaths(job.base))
    message = str(error.value)
    for word in words:
        assert word in message, message
    assert len(message) < 1024
    assert not job.model.exists() or not list(job.model.glob("*"))
    return message


def test_missing_training_channel_writes_client_error_and_exits_1(job: Job):
    failed(job, "'training' channel is required")


def test_bad_hyperparameter_writes_client_error_and_exits_1(job: Job):
    job.channel("training", make_table("binary"))
    job.hyperparameters({"n_epochs": "0"})
    failed(job, "'n_epochs'", "[1, 100000]")


def test_empty_file(job: Job):
    (job.data / "training").mkdir(parents=True)
    (job.data / "training" / "empty.csv").write_text("")
    rejected(job, "empty.csv", "empty")


def test_wrong_column_count_names_file_and_line(job: Job):
    path = job.channel("training", make_table("binary"))
    lines = path.read_text().splitlines()
    lines[6] += ",extra"
    path.write_text("\n".join(lines) + "\n")
    rejected(job, "data.csv", "line 7", "expected 5 columns but found 6")


def test_missing_target_value_names_the_line(job: Job):
    table = make_table("binary")
    table.loc[9, "label"] = None
    job.channel("training", table)
    rejected(job, "data.csv, line 10", "target")


def test_target_column_not_in_header(job: Job):
    job.channel("training", make_table("binary"), header=True)
    job.hyperparameters({**FAST, "target_column": "churn"})
    rejected(job, "'churn'", "label, color, size, shape, weight")


@pytest.mark.parametrize(
    "content, words",
    [
        ('{"cat_index_list": [0, 2]}', ["[0]", "between 0 and 4"]),
        ('{"cat_index_list": [9]}', ["[9]"]),
        ('{"categorical": [1]}', ["cat_index_list"]),
        ("not json", ["not valid JSON"]),
    ],
)
def test_bad_categorical_index(job: Job, content: str, words: list[str]):
    job.channel("training", make_table("binary"))
    (job.data / "training" / "categorical_index.json").write_text(content)
    rejected(job, "categorical_index.json", *words)


def test_text_in_a_declared_numeric_column(job: Job):
    table = make_table("binary")
    table["size"] = table["size"].astype(object)
    table.loc[4, "size"] = "big"
    job.channel("training", table)
    (job.data / "training" / "categorical_index.json").write_text('{"cat_index_list": [1]}')
    rejected(job, "line 5", "'c2'", "'big' is not a number")


@pytest.mark.parametrize(
    "values, words",
    [
        ({"learning_rate": "fast"}, ["'learning_rate'", "'fast'"]),
        ({"input_dim": '"30"'}, ["'input_dim'", "one of 8, 16, 32"]),
        ({"task": "ranking"}, ["'task'", "'binary'"]),
        ({"n_epoch": "3"}, ["Unknown hyperparameter(s): n_epoch", "n_epochs"]),
        ({"n_heads": "3"}, ["'n_heads' (3) must divide 'input_dim' (32)"]),
        ({"eval_metric": "rmse"}, ["eval_metric=rmse does not apply to task binary"]),
        ({"pretrain_only": "true", "pretrain_objective": "none"}, ["choose mlm or rtd"]),
    ],
)
def test_bad_hyperparameter(job: Job, values: dict, words: list[str]):
    job.channel("training", make_table("binary"))
    job.hyperparameters(values)
    rejected(job, *words)


def test_unknown_channel_in_input_data_config(job: Job):
    job.channel("training", make_table("binary"))
    (job.config / "inputdataconfig.json").write_text(
        json.dumps({"training": {"ContentType": "text/csv"}, "test": {"ContentType": "text/csv"}})
    )
    rejected(job, "Unknown channel(s) ['test']")


@pytest.mark.parametrize(
    "spec, words",
    [
        ({"ContentType": "application/json"}, ["ContentType=application/json", "text/csv"]),
        ({"TrainingInputMode": "Pipe"}, ["TrainingInputMode=Pipe", "File or FastFile"]),
    ],
)
def test_unsupported_channel_configuration(job: Job, spec: dict, words: list[str]):
    job.channel("training", make_table("binary"))
    (job.config / "inputdataconfig.json").write_text(json.dumps({"training": spec}))
    rejected(job, "'training'", *words)


def test_malformed_config_json_names_the_file(job: Job):
    job.channel("training", make_table("binary"))
    (job.config / "hyperparameters.json").write_text("{n_epochs: 3")
    rejected(job, "hyperparameters.json is not valid JSON")


def test_validation_channel_with_other_columns(job: Job):
    table = make_table("binary")
    job.channel("training", table.iloc[:200])
    job.channel("validation", table.iloc[200:].drop(columns="weight"))
    rejected(job, "validation channel has the feature columns")


def test_too_few_rows_to_hold_out_validation(job: Job):
    job.channel("training", make_table("regression").head(1))
    rejected(job, "1 labelled row(s)", "'validation' channel")


@pytest.mark.slow
def test_algorithm_error_keeps_the_traceback(job: Job):
    # A categorical column whose vocabulary is valid but whose model cannot be built is
    # hard to provoke from data; a corrupt weights file in `model/` stands in for a bug:
    # the job must still report an algorithm error with a traceback and exit 2.
    job.channel("training", make_table("binary"))
    job.model.mkdir(parents=True)
    (job.model / "model.safetensors").mkdir()  # a folder where the weights file must go
    result = job.train()
    assert result.returncode == ALGORITHM_ERROR_EXIT_CODE, result.stdout + result.stderr
    assert job.failure.startswith("AlgorithmError") and "Traceback" in job.failure


def test_labels_in_validation_must_be_known(job: Job):
    table = make_table("binary")
    job.channel("training", table.iloc[:200])
    bad = table.iloc[200:].copy()
    bad.iloc[3, 0] = "maybe"
    job.channel("validation", bad)
    rejected(job, "line 4", "'maybe'", "['no', 'yes']")


def test_header_only_frame_is_an_error(job: Job):
    job.channel("training", pd.DataFrame({"label": [], "x": []}), header=True)
    job.hyperparameters({**FAST, "target_column": "label"})
    rejected(job, "no data rows")


# --- checkpoints: spot interruptions and SIGTERM ------------------------------------------


@pytest.mark.slow
def test_restarted_job_resumes_from_its_checkpoint(job: Job):
    table = make_table("binary")
    job.channel("training", table)
    job.hyperparameters({**FAST, "n_epochs": "2", "patience": "50"})
    first = trained(job)
    assert (job.base / "checkpoints" / "checkpoint.pt").is_file()
    job.hyperparameters({**FAST, "n_epochs": "4", "patience": "50"})  # may change on restart
    second = trained(job)
    assert "resuming finetune" in second["log"] and "after epoch 2" in second["log"]
    assert "epoch 1/4" not in second["log"] and "epoch 3/4" in second["log"]
    assert first["epochs_run"] == 2 and second["epochs_run"] == 4


@pytest.mark.slow
def test_checkpoint_of_another_job_is_ignored(job: Job):
    job.channel("training", make_table("binary"))
    trained(job)
    job.hyperparameters({**FAST, "learning_rate": "0.002"})
    result = trained(job)
    assert "ignoring" in result["log"] and "epoch 1/4" in result["log"]


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_restart_finishes(job: Job):
    import os
    import subprocess
    import sys
    import time

    from conftest import TRAIN_ENTRY

    job.channel("training", make_table("binary", n=2000))
    job.hyperparameters({**FAST, "n_epochs": "200", "patience": "200", "batch_size": "16"})
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(job.base)}
    process = subprocess.Popen(
        [sys.executable, str(TRAIN_ENTRY)],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lines = []
    for line in process.stdout:  # wait for the second epoch to finish
        lines.append(line)
        if "epoch 2/200" in line:
            break
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output = "".join(lines) + process.communicate(timeout=60)[0]
    assert process.returncode == 143, output
    assert "SIGTERM received" in output and "checkpoint saved" in output
    assert not (job.base / "output" / "failure").exists()
    # Epochs may change on restart; batch_size may not (it is part of the job's identity).
    job.hyperparameters({**FAST, "n_epochs": "4", "patience": "200", "batch_size": "16"})
    resumed = trained(job)
    assert "resuming finetune" in resumed["log"] and "epoch 1/4" not in resumed["log"]


def test_failure_reason_fits_what_sagemaker_shows():
    long = UserError("bad value " + "x" * 5000)
    assert len(failure_reason(long)) <= FAILURE_REASON_LIMIT
    assert failure_reason(long).startswith("ClientError: bad value")
    try:
        raise RuntimeError("y" * 5000)
    except RuntimeError as error:
        reason = failure_reason(error)
    assert reason[:FAILURE_REASON_LIMIT].startswith("AlgorithmError: RuntimeError: yyy")
    assert "Traceback" in reason[:FAILURE_REASON_LIMIT]


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["random bytes", "empty", "not a dict"])
def test_damaged_checkpoint_is_set_aside_and_the_job_finishes(job: Job, damage: str):
    job.channel("training", make_table("binary"))
    job.hyperparameters({**FAST, "n_epochs": "2", "patience": "50"})
    trained(job)
    folder = job.base / "checkpoints"
    newest, previous = folder / "checkpoint.pt", folder / "checkpoint.previous.pt"
    assert previous.is_file()
    for path in (newest, previous):
        if damage == "not a dict":
            path.write_bytes((REPO / "hyperparameters.json").read_bytes())
        else:
            path.write_bytes(b"" if damage == "empty" else bytes(range(256)) * 8)
    job.hyperparameters({**FAST, "n_epochs": "3", "patience": "50"})
    report = trained(job)
    assert "set aside the unreadable checkpoint" in report["log"]
    assert "epoch 1/3" in report["log"] and report["epochs_run"] == 3
    assert len(list(folder.glob("checkpoint*.damaged-*"))) == 2  # renamed, not deleted


def _truncate(newest) -> None:
    newest.write_bytes(newest.read_bytes()[:1000])  # what a partial sync leaves


def _other_generators(newest) -> None:
    """Readable, but its random generators are not the loop's (incompatible)."""
    import torch

    state = torch.load(newest, weights_only=True)
    state["generators"] = [torch.zeros(3, dtype=torch.uint8)] * 5
    torch.save(state, newest)


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage", [_truncate, _other_generators], ids=["truncated", "incompatible"]
)
def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(job: Job, damage):
    """A truncated or an incompatible newest checkpoint: the job resumes from the previous one."""
    job.channel("training", make_table("binary"))
    job.hyperparameters({**FAST, "n_epochs": "2", "patience": "50"})
    trained(job)
    damage(job.base / "checkpoints" / "checkpoint.pt")
    report = trained(job)
    assert "set aside" in report["log"] and "after epoch 1" in report["log"]
    assert "epoch 2/2" in report["log"] and "epoch 1/2" not in report["log"]


@pytest.mark.slow
def test_restarted_early_stopped_job_writes_the_same_model_without_training(job: Job):
    job.channel("training", make_table("binary"))
    job.hyperparameters({**FAST, "n_epochs": "40", "patience": "1", "learning_rate": "0.01"})
    first = trained(job)
    assert first["epochs_run"] < 40  # stopped early
    weights = (job.model / "model.safetensors").read_bytes()
    again = trained(job)
    assert "nothing left to train" in again["log"]
    assert f"epoch {first['epochs_run'] + 1}/40" not in again["log"]
    assert (job.model / "model.safetensors").read_bytes() == weights
    assert again["validation"] == first["validation"]


@pytest.mark.slow
def test_kill_9_at_random_points_then_restart_always_finishes(job: Job):
    """SIGKILL gives no chance to save: whatever it leaves (a torn `.partial`, a checkpoint
    of an earlier epoch, a half-written model folder), restarts finish the job, and once it
    has finished a restart writes the identical model (the README's exactness promise)."""
    job.channel("training", make_table("binary", n=400))
    # long enough that a kill between 3 and 9 s lands before the job ends on a fast machine
    job.hyperparameters({**FAST, "n_epochs": "100", "patience": "100", "report": "false"})
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(job.base)}
    rng = random.Random(7)
    killed = 0
    for _ in range(3):  # kill -9 at a random moment (start-up, an epoch, a save)
        process = subprocess.Popen(
            [sys.executable, str(REPO / "docker" / "train")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            process.wait(timeout=rng.uniform(3.0, 9.0))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            killed += 1
    assert killed, "every run finished before its kill: nothing was tested"
    finished = trained(job)
    assert finished["epochs_run"] == 100
    weights = (job.model / "model.safetensors").read_bytes()
    again = trained(job)
    assert "/100 train_loss" not in again["log"]  # no epoch trained again
    assert (job.model / "model.safetensors").read_bytes() == weights


def _rewrite_checkpoints(folder, change) -> None:
    """Apply `change` to the state in both checkpoint files and save them back."""
    import torch

    for name in ("checkpoint.pt", "checkpoint.previous.pt"):
        path = folder / name
        state = torch.load(path, weights_only=True)
        change(state)
        torch.save(state, path)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["tensor shapes", "loop entry type"])
def test_incompatible_checkpoint_is_set_aside_and_the_job_finishes(job: Job, damage: str):
    """A readable checkpoint of the same job that does not fit the network or the loop is
    set aside like a damaged one (newest and previous), and the job starts afresh."""
    import torch

    job.channel("training", make_table("binary"))
    job.hyperparameters({**FAST, "n_epochs": "2", "patience": "50"})
    trained(job)
    folder = job.base / "checkpoints"

    def change(state: dict) -> None:
        if damage == "tensor shapes":
            name = next(iter(state["model"]))
            state["model"][name] = torch.zeros(3, 5, 7)
        else:
            state["loop"]["epoch"] = "two"

    _rewrite_checkpoints(folder, change)
    job.hyperparameters({**FAST, "n_epochs": "3", "patience": "50"})
    report = trained(job)
    assert "set aside the incompatible checkpoint" in report["log"]
    assert "epoch 1/3" in report["log"] and report["epochs_run"] == 3
    assert len(list(folder.glob("checkpoint*.damaged-*"))) == 2


@pytest.mark.slow
def test_a_checkpoint_path_that_is_a_folder_is_set_aside(job: Job):
    """`checkpoint.pt` as a folder (a bad sync) neither stops the job nor the saving."""
    job.channel("training", make_table("binary"))
    folder = job.base / "checkpoints"
    (folder / "checkpoint.pt").mkdir(parents=True)
    (folder / "checkpoint.pt" / "junk").write_text("x")
    job.hyperparameters({**FAST, "n_epochs": "2", "patience": "50"})
    report = trained(job)
    assert "set aside the unreadable checkpoint" in report["log"]
    assert report["epochs_run"] == 2 and (folder / "checkpoint.pt").is_file()


def test_a_checkpoint_of_other_network_code_or_format_is_another_job(monkeypatch):
    """The identity of a checkpoint holds the checkpoint format and the network code."""
    from tabtransformer import checkpoints

    hp, schema = {"seed": 0}, {"features": {}}
    same = checkpoints.fingerprint(hp, schema, 10)
    assert checkpoints.fingerprint(hp, schema, 10) == same
    monkeypatch.setattr(checkpoints, "NETWORK_CODE_DIGEST", "0" * 16)
    assert checkpoints.fingerprint(hp, schema, 10) != same
    monkeypatch.undo()
    monkeypatch.setattr(checkpoints, "FORMAT_VERSION", checkpoints.FORMAT_VERSION + 1)
    assert checkpoints.fingerprint(hp, schema, 10) != same

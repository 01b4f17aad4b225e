"""The SageMaker launcher against moto's AWS API stand-in on a loopback port."""

from __future__ import annotations

import importlib.util
import json
import re

import boto3
import pandas as pd
import pytest
from conftest import FAST, REPO, Job, free_port, make_table
from moto.server import ThreadedMotoServer

spec = importlib.util.spec_from_file_location("launch", REPO / "scripts" / "sagemaker_launch.py")
launch = importlib.util.module_from_spec(spec)
spec.loader.exec_module(launch)

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/tabtransformer:latest"
JOB = ["--image", IMAGE, "--role", ROLE, "--bucket", "tables", "--prefix", "churn"]


@pytest.fixture(scope="module")
def aws():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def env(aws, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return aws


def run(capsys, *argv: str) -> tuple[int, object]:
    code = launch.main(list(argv))
    out = capsys.readouterr()
    return code, (json.loads(out.out) if code == 0 else out.err)


def upload_args(csv, bucket: str, prefix: str) -> list[str]:
    return [
        "upload",
        "--csv",
        str(csv),
        "--target-column",
        "label",
        "--bucket",
        bucket,
        "--prefix",
        prefix,
    ]


@pytest.fixture
def table_csv(tmp_path):
    path = tmp_path / "table.csv"
    make_table("binary").to_csv(path, index=False)
    return path


def test_upload_writes_the_channel_layout(env, capsys, table_csv):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="tables")
    code, out = run(capsys, *upload_args(table_csv, "tables", "churn"))
    assert code == 0, out
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="tables")["Contents"])
    assert keys == ["churn/training/categorical_index.json", "churn/training/data.csv"]
    body = s3.get_object(Bucket="tables", Key="churn/training/data.csv")["Body"].read()
    first = body.decode().splitlines()[0].split(",")
    assert first[0] in ("yes", "no") and len(first) == 5  # target first, no header
    index = json.loads(
        s3.get_object(Bucket="tables", Key="churn/training/categorical_index.json")["Body"].read()
    )
    assert index == {"cat_index_list": [1, 3]}  # color and shape


def test_missing_bucket_and_missing_credentials_are_clear(env, capsys, table_csv, monkeypatch):
    code, err = run(capsys, *upload_args(table_csv, "no-such-bucket", "x"))
    assert code == 2 and "'no-such-bucket' does not exist" in err
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code, err = run(capsys, "train", *JOB)
    assert code == 2 and "no AWS credentials" in err


def test_train_job_carries_the_registry_metric_definitions(env, capsys, monkeypatch):
    sent = []
    send = launch.call
    monkeypatch.setattr(launch, "call", lambda *a: sent.append(a[2]) or send(*a))
    code, out = run(
        capsys,
        "train",
        *JOB,
        "--task",
        "binary",
        "--hp",
        "n_epochs=20",
        "--channels",
        "training",
        "validation",
        "--job-name",
        "tt-train-1",
    )
    assert code == 0, out
    job = boto3.client("sagemaker").describe_training_job(TrainingJobName="tt-train-1")
    assert job["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    # moto does not keep metric definitions: check the request it accepted.
    definitions = sent[0]["AlgorithmSpecification"]["MetricDefinitions"]
    assert definitions == launch.metrics.metric_definitions("binary")
    assert {"f1", "auc", "validation:auc"} <= {m["Name"] for m in definitions}
    assert job["HyperParameters"] == {"n_epochs": "20"}
    assert [c["ChannelName"] for c in job["InputDataConfig"]] == ["training", "validation"]


def test_tune_deploy_invoke_transform(env, capsys, tmp_path):
    code, out = run(capsys, "tune", *JOB, "--task", "regression", "--job-name", "tt-tune-1")
    assert code == 0, out
    tuning = boto3.client("sagemaker").describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName="tt-tune-1"
    )
    objective = tuning["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
    assert objective == {"Type": "Maximize", "MetricName": "r2"}
    code, out = run(
        capsys,
        "deploy",
        "--name",
        "tt-endpoint",
        "--image",
        IMAGE,
        "--role",
        ROLE,
        "--model-data",
        "s3://tables/churn/output/model.tar.gz",
    )
    assert code == 0, out
    endpoint = boto3.client("sagemaker").describe_endpoint(EndpointName="tt-endpoint")
    assert endpoint["EndpointConfigName"] == "tt-endpoint"
    rows = tmp_path / "rows.csv"
    rows.write_text("red,10.1,circle,3.2\n")
    code, out = run(capsys, "invoke", "--endpoint", "tt-endpoint", "--csv", str(rows))
    assert code == 0 and "Body" in out
    code, out = run(
        capsys,
        "transform",
        "--model-name",
        "tt-endpoint",
        "--input",
        "s3://tables/batch/in",
        "--output",
        "s3://tables/batch/out",
        "--job-name",
        "tt-transform-1",
    )
    assert code == 0, out
    transform = boto3.client("sagemaker").describe_transform_job(TransformJobName="tt-transform-1")
    assert transform["TransformOutput"]["AssembleWith"] == "Line"


def test_dry_run_validates_and_calls_nothing(capsys, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    code, out = run(capsys, "tune", *JOB, "--dry-run")
    assert code == 0 and out["operation"] == "CreateHyperParameterTuningJob"
    ranges = out["request"]["HyperParameterTuningJobConfig"]["ParameterRanges"]
    tuned = [r["Name"] for kind in ranges.values() for r in kind]
    assert all(name in launch.BY_NAME for name in tuned)
    code, err = run(capsys, "train", *JOB, "--dry-run", "--hp", "n_epoch=3")
    assert code == 2 and "unknown hyperparameter" in err


@pytest.mark.slow
def test_every_registry_regex_reads_the_value_in_metrics_json(tmp_path):
    """A real training job's log, read by each regex SageMaker would use."""
    for task in ("binary", "multiclass", "regression"):
        job = Job(tmp_path / task)
        job.channel("training", make_table(task, n=300))
        job.hyperparameters({**FAST, "report": "false"})  # the log and histories suffice
        result = job.train()
        assert result.returncode == 0, result.stderr
        report = json.loads((job.model / "metrics.json").read_text())
        history = pd.read_csv(job.base / "output" / "data" / "training_history.csv")
        for definition in launch.metrics.metric_definitions(task):
            found = re.findall(definition["Regex"], result.stdout)
            assert found, definition
            name = definition["Name"]
            if name.startswith("validation:"):
                column = "validation_" + name.split(":")[1]
                assert float(found[-1]) == pytest.approx(history[column].iloc[-1], rel=1e-5)
            else:
                assert float(found[-1]) == pytest.approx(report["validation"][name], rel=1e-5)

"""Run this image on SageMaker with boto3: upload, train, tune, deploy, invoke, transform.

Every command takes --dry-run: it validates the request against botocore's service model
and prints it, without credentials and without calling AWS. Metric definitions and the
tuning objective come from the project's metric registry.

    python scripts/sagemaker_launch.py upload --csv table.csv --target-column churn \\
        --bucket my-bucket --prefix churn
    python scripts/sagemaker_launch.py train --image URI --role ARN --bucket my-bucket \\
        --prefix churn --task binary --hp n_epochs=50
    python scripts/sagemaker_launch.py tune ...   deploy ...   invoke ...   transform ...

Run `python scripts/sagemaker_launch.py COMMAND --help` for each command's options.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from typing import Any

import boto3
import pandas as pd
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError
from botocore.validate import validate_parameters

from tabtransformer import metrics
from tabtransformer.hyperparameters import BY_NAME

# Documented tuning ranges (README, "Run on SageMaker"): the hyperparameters that matter
# most on small and medium tables.
TUNING_RANGES: dict[str, list[dict[str, Any]]] = {
    "ContinuousParameterRanges": [
        {
            "Name": "learning_rate",
            "MinValue": "0.0001",
            "MaxValue": "0.003",
            "ScalingType": "Logarithmic",
        },
        {
            "Name": "weight_decay",
            "MinValue": "0.000001",
            "MaxValue": "0.1",
            "ScalingType": "Logarithmic",
        },
        {"Name": "mlp_dropout", "MinValue": "0.0", "MaxValue": "0.5", "ScalingType": "Linear"},
        {"Name": "attn_dropout", "MinValue": "0.0", "MaxValue": "0.5", "ScalingType": "Linear"},
    ],
    "IntegerParameterRanges": [
        {"Name": "n_blocks", "MinValue": "1", "MaxValue": "8", "ScalingType": "Linear"},
        {"Name": "batch_size", "MinValue": "64", "MaxValue": "1024", "ScalingType": "Logarithmic"},
    ],
    "CategoricalParameterRanges": [{"Name": "input_dim", "Values": ["16", "32", "64"]}],
}
OBJECTIVE = {"binary": "auc", "multiclass": "accuracy", "regression": "r2"}


class LaunchError(Exception):
    """A problem the user can fix: printed without a traceback, exit code 2."""


def s3_uri(bucket: str, *parts: str) -> str:
    return "s3://" + "/".join([bucket, *(p.strip("/") for p in parts if p)])


def checked(service: str, operation: str, request: dict[str, Any]) -> dict[str, Any]:
    """Validate a request against botocore's model of the operation; raise on mistakes."""
    model = (
        boto3.session.Session()
        .client(service, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
        .meta.service_model.operation_model(operation)
    )
    validate_parameters(request, model.input_shape)
    return request


def parse_hyperparameters(pairs: list[str]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise LaunchError(f"--hp {pair!r}: write NAME=VALUE")
        if key not in BY_NAME:
            raise LaunchError(f"--hp {key}: unknown hyperparameter; valid: {sorted(BY_NAME)}")
        values[key] = value
    return values


def algorithm(image: str, task: str | None) -> dict[str, Any]:
    return {
        "TrainingImage": image,
        "TrainingInputMode": "File",
        "MetricDefinitions": metrics.metric_definitions(task),
    }


def channels(bucket: str, prefix: str, names: tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        {
            "ChannelName": name,
            "ContentType": "text/csv",
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": s3_uri(bucket, prefix, name),
                    "S3DataDistributionType": "FullyReplicated",
                }
            },
        }
        for name in names
    ]


def resources(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "InstanceType": args.instance_type,
        "InstanceCount": args.instance_count,
        "VolumeSizeInGB": 30,
    }


def job_name(args: argparse.Namespace, prefix: str) -> str:
    """--job-name, or the prefix and a timestamp."""
    return args.job_name or f"{prefix}-{time.strftime('%y%m%d-%H%M%S')}"


def create(operation: str, request: dict[str, Any]) -> dict[str, Any]:
    """A SageMaker Create* request, checked against the service model."""
    return checked("sagemaker", operation, request)


def job_definition(args: argparse.Namespace, output: str) -> dict[str, Any]:
    """What a training job and a tuning job's training jobs share (the hyperparameters go
    under the key each request names them by)."""
    return {
        "AlgorithmSpecification": algorithm(args.image, args.task),
        "RoleArn": args.role,
        "InputDataConfig": channels(args.bucket, args.prefix, tuple(args.channels)),
        "OutputDataConfig": {"S3OutputPath": s3_uri(args.bucket, args.prefix, output)},
        "ResourceConfig": resources(args),
        "StoppingCondition": {"MaxRuntimeInSeconds": args.max_runtime},
    }


def training_request(args: argparse.Namespace) -> dict[str, Any]:
    name = job_name(args, "tabtransformer")
    return create(
        "CreateTrainingJob",
        {
            "TrainingJobName": name,
            **job_definition(args, "output"),
            "HyperParameters": parse_hyperparameters(args.hp),
            "CheckpointConfig": {
                "S3Uri": s3_uri(args.bucket, args.prefix, "checkpoints", name),
                "LocalPath": "/opt/ml/checkpoints",
            },
        },
    )


def tuning_request(args: argparse.Namespace) -> dict[str, Any]:
    objective = metrics.BY_NAME[OBJECTIVE[args.task]]
    name = job_name(args, "tt-tune")  # tuning job names are limited to 32 characters
    return create(
        "CreateHyperParameterTuningJob",
        {
            "HyperParameterTuningJobName": name,
            "HyperParameterTuningJobConfig": {
                "Strategy": "Bayesian",
                "HyperParameterTuningJobObjective": {
                    "Type": "Maximize" if objective.higher_is_better else "Minimize",
                    "MetricName": objective.name,
                },
                "ResourceLimits": {
                    "MaxNumberOfTrainingJobs": args.max_jobs,
                    "MaxParallelTrainingJobs": args.max_parallel,
                },
                "ParameterRanges": TUNING_RANGES,
            },
            "TrainingJobDefinition": {
                **job_definition(args, "tuning"),
                "StaticHyperParameters": parse_hyperparameters(args.hp),
            },
        },
    )


def deploy_requests(args: argparse.Namespace) -> list[tuple[str, str, dict[str, Any]]]:
    name = args.name
    return [
        (
            "sagemaker",
            "CreateModel",
            checked(
                "sagemaker",
                "CreateModel",
                {
                    "ModelName": name,
                    "ExecutionRoleArn": args.role,
                    "PrimaryContainer": {"Image": args.image, "ModelDataUrl": args.model_data},
                },
            ),
        ),
        (
            "sagemaker",
            "CreateEndpointConfig",
            checked(
                "sagemaker",
                "CreateEndpointConfig",
                {
                    "EndpointConfigName": name,
                    "ProductionVariants": [
                        {
                            "VariantName": "AllTraffic",
                            "ModelName": name,
                            "InstanceType": args.instance_type,
                            "InitialInstanceCount": 1,
                        }
                    ],
                },
            ),
        ),
        (
            "sagemaker",
            "CreateEndpoint",
            checked(
                "sagemaker", "CreateEndpoint", {"EndpointName": name, "EndpointConfigName": name}
            ),
        ),
    ]


def transform_request(args: argparse.Namespace) -> dict[str, Any]:
    name = job_name(args, "tabtransformer-transform")
    return create(
        "CreateTransformJob",
        {
            "TransformJobName": name,
            "ModelName": args.model_name,
            "BatchStrategy": "MultiRecord",
            "MaxPayloadInMB": 6,
            "Environment": {"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": args.accept},
            "TransformInput": {
                "ContentType": "text/csv",
                "SplitType": "Line",
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": args.input}},
            },
            "TransformOutput": {
                "S3OutputPath": args.output,
                "Accept": args.accept,
                "AssembleWith": "Line",
            },
            "TransformResources": {"InstanceType": args.instance_type, "InstanceCount": 1},
        },
    )


def jumpstart_layout(csv_path: str, target: str) -> tuple[bytes, dict[str, list[int]]]:
    """A CSV with a header -> headerless CSV, target first, plus categorical_index.json."""
    try:
        table = pd.read_csv(csv_path)
    except (OSError, ValueError) as e:
        raise LaunchError(f"Cannot read {csv_path}: {e}") from None
    if target not in table.columns:
        raise LaunchError(
            f"--target-column {target!r} is not a column of {csv_path}; "
            f"columns: {list(table.columns)}"
        )
    features = [c for c in table.columns if c != target]
    categorical = [
        i + 1 for i, c in enumerate(features) if not pd.api.types.is_numeric_dtype(table[c])
    ]
    body = io.StringIO()
    table[[target, *features]].to_csv(body, header=False, index=False)
    return body.getvalue().encode(), {"cat_index_list": categorical}


def upload(args: argparse.Namespace) -> dict[str, Any]:
    body, cat_index = jumpstart_layout(args.csv, args.target_column)
    objects = {
        f"{args.prefix.strip('/')}/training/data.csv": body,
        f"{args.prefix.strip('/')}/training/categorical_index.json": json.dumps(cat_index).encode(),
    }
    requests = [
        checked("s3", "PutObject", {"Bucket": args.bucket, "Key": key, "Body": data})
        for key, data in objects.items()
    ]
    if not args.dry_run:
        s3 = boto3.session.Session().client("s3")
        try:
            s3.head_bucket(Bucket=args.bucket)
        except ClientError as e:
            raise LaunchError(
                f"Bucket {args.bucket!r} does not exist or is not yours "
                f"({e.response['Error'].get('Code')}): create it first "
                f"(aws s3 mb s3://{args.bucket})."
            ) from None
        for request in requests:
            s3.put_object(**request)
    return {
        "uploaded": [s3_uri(args.bucket, key) for key in objects],
        "categorical_index": cat_index,
    }


def call(service: str, operation: str, request: dict[str, Any], dry_run: bool) -> Any:
    """Send a validated request, or only print it with --dry-run."""
    if dry_run:
        shown = {k: v for k, v in request.items() if k != "Body"}
        return {"dry_run": True, "service": service, "operation": operation, "request": shown}
    client = boto3.session.Session().client(service)
    method = getattr(
        client, "".join("_" + c.lower() if c.isupper() else c for c in operation).lstrip("_")
    )
    response = method(**request)
    response.pop("ResponseMetadata", None)
    if "Body" in response:
        response["Body"] = response["Body"].read().decode()
    return response


def run(args: argparse.Namespace) -> Any:
    if args.command == "upload":
        return upload(args)
    if args.command == "train":
        return call("sagemaker", "CreateTrainingJob", training_request(args), args.dry_run)
    if args.command == "tune":
        return call(
            "sagemaker", "CreateHyperParameterTuningJob", tuning_request(args), args.dry_run
        )
    if args.command == "deploy":
        return [call(*step, args.dry_run) for step in deploy_requests(args)]
    if args.command == "invoke":
        try:
            with open(args.csv, "rb") as f:
                body = f.read()
        except OSError as e:
            raise LaunchError(f"Cannot read {args.csv}: {e}") from None
        request = checked(
            "sagemaker-runtime",
            "InvokeEndpoint",
            {
                "EndpointName": args.endpoint,
                "ContentType": "text/csv",
                "Accept": args.accept,
                "Body": body,
            },
        )
        return call("sagemaker-runtime", "InvokeEndpoint", request, args.dry_run)
    return call("sagemaker", "CreateTransformJob", transform_request(args), args.dry_run)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--dry-run", action="store_true", help="validate and print the request(s); call nothing"
        )
        return p

    def job_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--image", required=True, help="ECR image URI of this container")
        p.add_argument("--role", required=True, help="SageMaker execution role ARN")
        p.add_argument("--bucket", required=True)
        p.add_argument("--prefix", required=True, help="S3 prefix holding training/ etc.")
        p.add_argument(
            "--task",
            choices=sorted(OBJECTIVE),
            default=None,
            help="metric definitions (and tuning objective) for this task",
        )
        p.add_argument(
            "--channels",
            nargs="+",
            default=["training"],
            choices=["training", "validation", "unlabeled", "model"],
        )
        p.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE")
        p.add_argument("--instance-type", default="ml.g5.xlarge")
        p.add_argument("--instance-count", type=int, default=1)
        p.add_argument("--max-runtime", type=int, default=86400, help="seconds")
        p.add_argument("--job-name")

    p = command("upload", "upload a CSV (with header) to S3 in the channel layout")
    p.add_argument("--csv", required=True)
    p.add_argument("--target-column", required=True)
    p.add_argument("--bucket", required=True)
    p.add_argument("--prefix", required=True)
    job_options(command("train", "start a training job"))
    p = command("tune", "start a hyperparameter tuning job over the documented ranges")
    job_options(p)
    p.set_defaults(task="binary")
    p.add_argument("--max-jobs", type=int, default=20)
    p.add_argument("--max-parallel", type=int, default=2)
    p = command("deploy", "create a model, endpoint config and real-time endpoint")
    p.add_argument("--name", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--role", required=True)
    p.add_argument("--model-data", required=True, help="s3://.../model.tar.gz")
    p.add_argument("--instance-type", default="ml.m5.xlarge")
    p = command("invoke", "send a CSV file of feature rows to an endpoint")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--csv", required=True)
    p.add_argument("--accept", default="application/json")
    p = command("transform", "run a batch transform over an S3 prefix of CSV files")
    p.add_argument("--model-name", required=True)
    p.add_argument("--input", required=True, help="s3:// prefix of headerless CSV features")
    p.add_argument("--output", required=True, help="s3:// prefix for the predictions")
    p.add_argument("--accept", default="text/csv")
    p.add_argument("--instance-type", default="ml.m5.xlarge")
    p.add_argument("--job-name")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result = run(args)
    except NoCredentialsError:
        print(
            "error: no AWS credentials found. Run `aws configure`, set AWS_PROFILE, or "
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; or add --dry-run.",
            file=sys.stderr,
        )
        return 2
    except NoRegionError:
        print("error: no AWS region set: set AWS_DEFAULT_REGION (e.g. us-east-1).", file=sys.stderr)
        return 2
    except (LaunchError, ClientError, BotoCoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

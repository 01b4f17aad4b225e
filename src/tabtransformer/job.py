"""The training job, start to end: config -> channels -> preprocessing -> train -> artifact.

hyperparameters.json, inputdataconfig.json   (validated before any data is read)
training [+ validation] channels -> TablePreprocessor / TargetEncoder (fit on training)
-> tensors -> fit() with early stopping -> model/ + output/data/
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

from tabtransformer import hyperparameters, metrics
from tabtransformer.artifacts import save_artifact
from tabtransformer.channels import LabelledTable, read_labelled
from tabtransformer.errors import UserError
from tabtransformer.model import TabTransformer, TabTransformerConfig
from tabtransformer.paths import SageMakerPaths
from tabtransformer.preprocessing import TablePreprocessor, TargetEncoder
from tabtransformer.training import Encoded, evaluate, fit, select_device

log = logging.getLogger(__name__)

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
    except ValueError as e:
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
    if "training" not in present:
        raise UserError(
            "The 'training' channel is required: labelled rows with the target "
            "in column 0 (or named by the target_column hyperparameter)."
        )
    return present


def split_validation(
    table: LabelledTable, fraction: float, seed: int, classify: bool
) -> tuple[LabelledTable, LabelledTable]:
    """Seeded hold-out, stratified by class when every class has two rows or more."""
    labels = table.target.astype(str)
    stratify = labels if classify and labels.value_counts().min() >= 2 else None
    try:
        train_idx, valid_idx = train_test_split(
            np.arange(len(labels)), test_size=fraction, random_state=seed, stratify=stratify
        )
    except ValueError:  # too few rows per class for a stratified split
        train_idx, valid_idx = train_test_split(
            np.arange(len(labels)), test_size=fraction, random_state=seed
        )
    if len(train_idx) == 0 or len(valid_idx) == 0:
        raise UserError(
            f"The training channel has {len(labels)} row(s): too few to hold out "
            "a validation share. Add rows or a 'validation' channel."
        )

    def take(idx: np.ndarray) -> LabelledTable:
        idx = np.sort(idx)
        return LabelledTable(
            table.features.iloc[idx], table.target.iloc[idx], table.categorical_columns
        )

    return take(train_idx), take(valid_idx)


def encode(pre: TablePreprocessor, target: TargetEncoder, table: LabelledTable) -> Encoded:
    codes, numbers = pre.transform(table.features)
    return Encoded(
        torch.from_numpy(codes),
        torch.from_numpy(numbers),
        torch.from_numpy(target.encode(table.target)),
    )


def check_same_columns(train: pd.DataFrame, valid: pd.DataFrame) -> None:
    if list(train.columns) != list(valid.columns):
        raise UserError(
            f"The validation channel has the feature columns {list(valid.columns)} "
            f"but the training channel has {list(train.columns)}."
        )


def run(paths: SageMakerPaths) -> None:
    """Run one training job over the `/opt/ml` tree `paths`."""
    hp = hyperparameters.parse(read_json_config(paths.hyperparameters, {}))
    channels = validate_channels(paths)
    torch.manual_seed(hp["seed"])
    train = read_labelled(paths.channel("training"), hp["target_column"])
    log.info(
        "training channel: %d rows, %d feature columns", len(train.target), train.features.shape[1]
    )
    target = TargetEncoder.fit(train.target, hp["task"], hp["max_classes"])
    if hp["eval_metric"] != "auto" and target.task not in metrics.BY_NAME[hp["eval_metric"]].tasks:
        raise UserError(
            f"eval_metric={hp['eval_metric']} does not apply to task "
            f"{target.task}; use one of "
            f"{[m.name for m in metrics.for_task(target.task)]} or auto."
        )
    if "validation" in channels:
        valid = read_labelled(paths.channel("validation"), hp["target_column"])
        check_same_columns(train.features, valid.features)
    else:
        train, valid = split_validation(
            train, hp["validation_fraction"], hp["seed"], target.task != "regression"
        )
        log.info(
            "no validation channel: held out %d of %d rows (seed %d)",
            len(valid.target),
            len(valid.target) + len(train.target),
            hp["seed"],
        )
    label_info = (
        f"classes {target.classes}"
        if target.classes
        else (f"target mean {target.mean:.6g}, std {target.std:.6g}")
    )
    log.info("task: %s (%s)", target.task, label_info)
    pre = TablePreprocessor.fit(train.features, train.categorical_columns)
    log.info("%s", pre.describe())
    train_data, valid_data = encode(pre, target, train), encode(pre, target, valid)

    config = TabTransformerConfig(
        cardinalities=pre.cardinalities,
        n_continuous=len(pre.numeric),
        n_outputs=target.n_outputs,
        dim=hp["input_dim"],
        n_blocks=hp["n_blocks"],
        n_heads=hp["n_heads"],
        frac_shared_embed=hp["frac_shared_embed"],
        attn_dropout=hp["attn_dropout"],
        mlp_dropout=hp["mlp_dropout"],
        continuous_norm=hp["continuous_norm"],
    )
    model = TabTransformer(config)
    device = select_device()
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "model: %s parameters on %s; %d training rows, %d validation rows",
        f"{n_params:,}",
        device,
        len(train_data),
        len(valid_data),
    )

    history, best_epoch = fit(model, train_data, valid_data, target, hp, device)
    scores = evaluate(model, valid_data, target, device)
    model.cpu()
    for metric in metrics.for_task(target.task):
        log.info("%s", metric.final_line(scores[metric.name]))
    report = {
        "task": target.task,
        "validation": scores,
        "epochs_run": len(history),
        "best_epoch": best_epoch,
    }
    paths.output_data.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(history).to_csv(paths.output_data / "training_history.csv", index=False)
    save_artifact(
        paths.model,
        model,
        pre,
        target,
        header=bool(hp["target_column"]),
        hyperparameters=hp,
        metrics=report,
    )
    log.info("model written to %s", paths.model)

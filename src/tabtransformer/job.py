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
from tabtransformer.artifacts import Artifact, read_artifact, save_artifact
from tabtransformer.channels import LabelledTable, read_labelled, read_unlabelled
from tabtransformer.checkpoints import Checkpointer, StopFlag, fingerprint
from tabtransformer.distributed import World
from tabtransformer.errors import UserError
from tabtransformer.model import TabTransformer, TabTransformerConfig
from tabtransformer.paths import SageMakerPaths
from tabtransformer.preprocessing import TablePreprocessor, TargetEncoder
from tabtransformer.pretraining import pretrain
from tabtransformer.reports import write_history
from tabtransformer.training import Encoded, evaluate, fit

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
    if "training" not in present and "unlabeled" not in present:
        raise UserError(
            "The 'training' channel is required (labelled rows with the target in column 0, "
            "or named by the target_column hyperparameter), unless the job only pretrains "
            "on an 'unlabeled' channel."
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


def check_schema(
    base: TablePreprocessor, features: pd.DataFrame, categorical: list[str] | None
) -> None:
    """A table fine-tuned from `base` must have its columns, in its order, of its kinds."""
    expected, found = base.feature_names, [str(c) for c in features.columns]
    if found != expected:
        missing = [c for c in expected if c not in found]
        extra = [c for c in found if c not in expected]
        detail = (
            f"missing {missing}; unexpected {extra}"
            if missing or extra
            else "the same columns in another order"
        )
        raise UserError(
            f"The training data does not match the schema of the model in the 'model' "
            f"channel: {detail}. Expected feature columns {expected}, found {found}."
        )
    if categorical is not None and sorted(categorical) != sorted(base.schema["categorical"]):
        raise UserError(
            f"categorical_index.json names the categorical columns {sorted(categorical)} but "
            f"the model in the 'model' channel was built with {base.schema['categorical']}."
        )


def resolve_objective(hp: dict[str, Any], channels: set[str], pretrain_only: bool) -> str:
    objective = hp["pretrain_objective"]
    if objective == "auto":
        wants = pretrain_only or ("unlabeled" in channels and "model" not in channels)
        objective = "rtd" if wants else "none"
    if pretrain_only and objective == "none":
        raise UserError(
            "pretrain_only is set (or there is no 'training' channel) but "
            "pretrain_objective=none: choose mlm or rtd."
        )
    return objective


def build_model(
    hp: dict[str, Any], pre: TablePreprocessor, n_outputs: int, base: Artifact | None
) -> TabTransformer:
    """A fresh network; from a base artifact, its embeddings and Transformer are reused."""
    if base is not None:
        config = TabTransformerConfig(**{**base.model.config.to_dict(), "n_outputs": n_outputs})
        model = TabTransformer(config)
        reused = {k: v for k, v in base.model.state_dict().items() if not k.startswith("mlp.")}
        model.load_state_dict(reused, strict=False)
        log.info(
            "fine-tuning from the 'model' channel: reused %d tensors (embeddings and "
            "Transformer); its architecture hyperparameters apply",
            len(reused),
        )
        return model
    return TabTransformer(
        TabTransformerConfig(
            cardinalities=pre.cardinalities,
            n_continuous=len(pre.numeric),
            n_outputs=n_outputs,
            dim=hp["input_dim"],
            n_blocks=hp["n_blocks"],
            n_heads=hp["n_heads"],
            frac_shared_embed=hp["frac_shared_embed"],
            attn_dropout=hp["attn_dropout"],
            mlp_dropout=hp["mlp_dropout"],
            continuous_norm=hp["continuous_norm"],
            numeric_embedding=hp["numeric_embedding"],
            numeric_bin_edges=[c.bin_edges for c in pre.numeric]
            if hp["numeric_embedding"] == "ple"
            else [],
            ensemble_size=hp["ensemble_size"],
            mlp_hidden_cap=hp["mlp_hidden_cap"],
        )
    )


def run_pretraining(
    model: TabTransformer,
    pre: TablePreprocessor,
    rows: pd.DataFrame,
    hp: dict[str, Any],
    objective: str,
    device: torch.device,
    paths: SageMakerPaths,
    checkpointer: Checkpointer,
) -> None:
    if not pre.cardinalities:
        raise UserError(
            "Pretraining needs token columns, and this table has no categorical column. "
            "Set continuous_bins (e.g. 16) to bring continuous columns in, or "
            "pretrain_objective=none."
        )
    codes = torch.from_numpy(pre.transform(rows)[0])
    order = torch.randperm(len(codes), generator=torch.Generator().manual_seed(hp["seed"]))
    n_valid = max(1, min(len(codes) // 10, 20000))
    log.info(
        "pretraining (%s) on %d unlabeled rows, %d held out for early stopping",
        objective,
        len(codes) - n_valid,
        n_valid,
    )
    train_codes, valid_codes = codes[order[n_valid:]], codes[order[:n_valid]]
    history = pretrain(
        model, train_codes, valid_codes, hp, objective, device, checkpointer, checkpointer.world
    )
    if checkpointer.world.is_main:
        write_history(paths.output_data, "pretraining_history", history)


def run(paths: SageMakerPaths, world: World | None = None) -> None:
    """Run one training job over the `/opt/ml` tree `paths` (as process `world.rank`)."""
    world = world or World()
    hp = hyperparameters.parse(read_json_config(paths.hyperparameters, {}))
    channels = validate_channels(paths)
    pretrain_only = hp["pretrain_only"] or "training" not in channels
    objective = resolve_objective(hp, channels, pretrain_only)
    torch.manual_seed(hp["seed"])
    header = bool(hp["target_column"])
    base = read_artifact(paths.channel("model")) if "model" in channels else None
    if base is not None and base.header != header:
        raise UserError(
            "The model in the 'model' channel was trained on files "
            f"{'with' if base.header else 'without'} a header row; set "
            "target_column the same way (empty means no header)."
        )
    device = world.device()

    train = valid = target = None
    if "training" in channels:  # a pretraining-only job still pretrains on its features
        train = read_labelled(paths.channel("training"), hp["target_column"])
        log.info(
            "training channel: %d rows, %d feature columns",
            len(train.target),
            train.features.shape[1],
        )
    if not pretrain_only:
        target = TargetEncoder.fit(train.target, hp["task"], hp["max_classes"])
        check_eval_metric(hp["eval_metric"], target.task)
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
            else f"target mean {target.mean:.6g}, std {target.std:.6g}"
        )
        log.info("task: %s (%s)", target.task, label_info)

    names = (
        train.features.columns.tolist()
        if train
        else (base.preprocessor.feature_names if base else None)
    )
    unlabeled, unlabeled_cats = (
        read_unlabelled(paths.channel("unlabeled"), header, names)
        if "unlabeled" in channels
        else (None, None)
    )
    if unlabeled is not None:
        log.info("unlabeled channel: %d rows", len(unlabeled))
    categorical = train.categorical_columns if train else unlabeled_cats
    feature_rows = pd.concat(
        [t for t in (train.features if train else None, unlabeled) if t is not None]
    )
    if base is not None:
        check_schema(base.preprocessor, feature_rows, categorical)
        pre = base.preprocessor
    else:
        numeric_bins = hp["numeric_bins"] if hp["numeric_embedding"] != "none" else 0
        pre = TablePreprocessor.fit(feature_rows, categorical, hp["continuous_bins"], numeric_bins)
    log.info("%s", pre.describe())

    model = build_model(hp, pre, target.n_outputs if target else 1, base)
    log.info(
        "model: %s parameters on %s", f"{sum(p.numel() for p in model.parameters()):,}", device
    )
    job_id = fingerprint(
        hp, {"features": pre.to_dict(), "target": target and target.to_dict()}, len(feature_rows)
    )
    checkpointer = Checkpointer(paths.checkpoints, job_id, StopFlag().install(), world)
    if objective != "none" and checkpointer.finished_phase() != "finetune":
        run_pretraining(model, pre, feature_rows, hp, objective, device, paths, checkpointer)
    if pretrain_only:
        if world.is_main:
            model.cpu()
            artifact = Artifact(model, pre, None, header, {"pretrained": objective})
            save_artifact(paths.model, artifact, hp)
            log.info("pretrained model written to %s", paths.model)
        return

    train_data, valid_data = encode(pre, target, train), encode(pre, target, valid)
    log.info("fine-tuning on %d rows, validating on %d", len(train_data), len(valid_data))
    history, best_epoch = fit(
        model, train_data, valid_data, target, hp, device, checkpointer, world
    )
    if not world.is_main:
        return  # the other processes train; the first one reports and writes
    scores = evaluate(model, valid_data, target, device)
    model.cpu()
    for metric in metrics.for_task(target.task):
        log.info("%s", metric.final_line(scores[metric.name]))
    report = {
        "task": target.task,
        "validation": scores,
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        "pretrained": objective
        if objective != "none"
        else ("from model channel" if base else None),
    }
    write_history(paths.output_data, "training_history", history)
    save_artifact(paths.model, Artifact(model, pre, target, header, report), hp)
    log.info("model written to %s", paths.model)


def check_eval_metric(name: str, task: str) -> None:
    if name != "auto" and task not in metrics.BY_NAME[name].tasks:
        raise UserError(
            f"eval_metric={name} does not apply to task {task}; use one of "
            f"{[m.name for m in metrics.for_task(task)]} or auto."
        )

"""The tables a training job learns from, read from its channels in one step.

`load_tables` reads `training` (split into training and validation rows unless there is a
`validation` channel) and `unlabeled`, fits the target encoding, and returns `Tables`:
every feature row (what preprocessing and pretraining see) plus, unless the job only
pretrains, the labelled rows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from tabtransformer.channels import LabelledTable, read_labelled, read_unlabeled
from tabtransformer.errors import UserError
from tabtransformer.inference import Encoded, encode_table
from tabtransformer.paths import SageMakerPaths
from tabtransformer.preprocessing import TablePreprocessor, TargetEncoder
from tabtransformer.settings import pick

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TableSettings:
    """The hyperparameters that decide how the tables are read, labelled and split."""

    target_column: str = ""
    task: str = "auto"
    max_classes: int = 20
    validation_fraction: float = 0.2
    seed: int = 0

    @property
    def header(self) -> bool:
        """Files have a header row exactly when target_column names the target."""
        return bool(self.target_column)

    @classmethod
    def from_hyperparameters(cls, hp: Mapping[str, Any]) -> TableSettings:
        return pick(cls, hp)


@dataclass(frozen=True)
class Labelled:
    """The labelled rows of a fine-tuning job and their target encoding."""

    train: LabelledTable
    valid: LabelledTable
    target: TargetEncoder

    def encoded(self, pre: TablePreprocessor) -> tuple[Encoded, Encoded]:
        """The training and validation rows as tensors, labels encoded."""
        return tuple(
            encode_table(pre, t.features, self.target.encode(t.target))
            for t in (self.train, self.valid)
        )


@dataclass(frozen=True)
class Tables:
    """Every feature row (training, then unlabeled) with its categorical columns (from
    categorical_index.json, else None), and the labelled rows (None: pretraining only)."""

    features: pd.DataFrame
    categorical: list[str] | None
    labelled: Labelled | None


def load_tables(
    paths: SageMakerPaths,
    channels: set[str],
    settings: TableSettings,
    pretrain_only: bool,
    base_feature_names: list[str] | None = None,
) -> Tables:
    """Read the channels present; `base_feature_names`: the columns of a base model (a
    pretraining-only job without `training` reads unlabeled rows by those names)."""
    train = None
    if "training" in channels:  # a pretraining-only job still pretrains on its features
        train = read_labelled(paths.channel("training"), settings.target_column)
        log.info(
            "training channel: %d rows, %d feature columns",
            len(train.target),
            train.features.shape[1],
        )
    labelled = None if pretrain_only else label(paths, channels, settings, train)
    names = train.features.columns.tolist() if train else base_feature_names
    unlabeled, unlabeled_categorical = (
        read_unlabeled(paths.channel("unlabeled"), settings.header, names)
        if "unlabeled" in channels
        else (None, None)
    )
    if unlabeled is not None:
        log.info("unlabeled channel: %d rows", len(unlabeled))
    if labelled is not None:  # the training rows, without the held-out validation rows
        train = labelled.train
    parts = [t for t in (train.features if train else None, unlabeled) if t is not None]
    categorical = train.categorical_columns if train else unlabeled_categorical
    return Tables(pd.concat(parts), categorical, labelled)


def label(
    paths: SageMakerPaths, channels: set[str], settings: TableSettings, train: LabelledTable
) -> Labelled:
    """Fit the target encoding on `train`; validation rows from their channel or held out."""
    target = TargetEncoder.fit(train.target, settings.task, settings.max_classes)
    if "validation" in channels:
        valid = read_labelled(paths.channel("validation"), settings.target_column)
        check_same_columns(train.features, valid.features)
    else:
        train, valid = split_validation(
            train, settings.validation_fraction, settings.seed, target.task != "regression"
        )
        log.info(
            "no validation channel: held out %d of %d rows (seed %d)",
            len(valid.target),
            len(valid.target) + len(train.target),
            settings.seed,
        )
    label_info = (
        f"classes {target.classes}"
        if target.classes
        else f"target mean {target.mean:.6g}, std {target.std:.6g}"
    )
    log.info("task: %s (%s)", target.task, label_info)
    return Labelled(train, valid, target)


def split_validation(
    table: LabelledTable, fraction: float, seed: int, classify: bool
) -> tuple[LabelledTable, LabelledTable]:
    """Seeded hold-out, stratified by class when every class has two rows or more."""
    labels = table.target.astype(str)
    if len(labels) < 2:
        raise UserError(
            f"The training channel has {len(labels)} row(s): too few to hold out "
            "a validation share. Add rows or a 'validation' channel."
        )
    stratify = labels if classify and labels.value_counts().min() >= 2 else None
    try:
        train_idx, valid_idx = train_test_split(
            np.arange(len(labels)), test_size=fraction, random_state=seed, stratify=stratify
        )
    except ValueError:  # too few rows per class for a stratified split
        train_idx, valid_idx = train_test_split(
            np.arange(len(labels)), test_size=fraction, random_state=seed
        )

    def take(idx: np.ndarray) -> LabelledTable:
        idx = np.sort(idx)
        return LabelledTable(
            table.features.iloc[idx], table.target.iloc[idx], table.categorical_columns
        )

    return take(train_idx), take(valid_idx)


def check_same_columns(train: pd.DataFrame, valid: pd.DataFrame) -> None:
    if list(train.columns) != list(valid.columns):
        raise UserError(
            f"The validation channel has the feature columns {list(valid.columns)} "
            f"but the training channel has {list(train.columns)}."
        )

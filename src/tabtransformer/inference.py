"""Inference: a table as tensors, batched forward passes, and the `Predictor` serving uses.

Imported by training (validation) and by serving alike; it knows nothing of optimisers,
checkpoints or processes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from tabtransformer.errors import UserError
from tabtransformer.model import TabTransformer
from tabtransformer.preprocessing import TablePreprocessor, TargetEncoder

EVAL_BATCH_ROWS = 8192


@dataclass
class Encoded:
    """A table as tensors: categorical codes (N, m), numbers (N, c), target (N,) or None."""

    codes: torch.Tensor
    numbers: torch.Tensor
    target: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.codes.shape[0]

    def rows(self, index: torch.Tensor | slice) -> Encoded:
        target = self.target[index] if self.target is not None else None
        return Encoded(self.codes[index], self.numbers[index], target)

    def to(self, device: torch.device) -> Encoded:
        target = self.target.to(device) if self.target is not None else None
        return Encoded(self.codes.to(device), self.numbers.to(device), target)


def encode_table(
    pre: TablePreprocessor, features: pd.DataFrame, target: np.ndarray | None = None
) -> Encoded:
    """Features (and optionally encoded labels) as tensors."""
    codes, numbers = pre.transform(features)
    labels = torch.from_numpy(target) if target is not None else None
    return Encoded(torch.from_numpy(codes), torch.from_numpy(numbers), labels)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPUs that support it, nothing elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def predict_raw(model: TabTransformer, data: Encoded, device: torch.device) -> torch.Tensor:
    """Model outputs (N, k, n_outputs) of the k ensemble members as float32 on the CPU,
    in evaluation mode."""
    was_training = model.training
    model.eval()
    outs = []
    for start in range(0, len(data), EVAL_BATCH_ROWS):
        part = data.rows(slice(start, start + EVAL_BATCH_ROWS)).to(device)
        with autocast(device):
            outs.append(model(part.codes, part.numbers).float().cpu())
    model.train(was_training)
    if not outs:
        return torch.zeros(0, model.config.ensemble_size, model.config.n_outputs)
    return torch.cat(outs)


def to_prediction(raw: torch.Tensor, target: TargetEncoder) -> np.ndarray:
    """Probabilities (N, C), or regression predictions in target units (N,): the mean over
    ensemble members (raw (N, k, n_outputs); (N, n_outputs) is one member) of their
    probabilities or values."""
    members = (raw if raw.ndim == 3 else raw.unsqueeze(1)).double()  # (N, k, n_outputs)
    if target.task == "regression":
        return target.decode_regression(members[:, :, 0].mean(dim=1).numpy())
    return torch.softmax(members, dim=2).mean(dim=1).numpy()


class Predictor:
    """A trained TabTransformer with its preprocessing: `predict(DataFrame)`."""

    def __init__(
        self,
        model: TabTransformer,
        preprocessor: TablePreprocessor,
        target: TargetEncoder,
        header: bool,
        metrics: dict[str, Any] | None = None,
    ):
        self.device = next(model.parameters()).device
        self.model = model.eval()
        self.preprocessor = preprocessor
        self.target = target
        self.header = header
        self.metrics = metrics or {}

    @property
    def task(self) -> str:
        return self.target.task

    @property
    def classes(self) -> list[Any] | None:
        return self.target.classes

    @property
    def feature_names(self) -> list[str]:
        return self.preprocessor.feature_names

    def align(self, features: pd.DataFrame) -> pd.DataFrame:
        """Columns by name when they match the training names, otherwise by position."""
        names = self.feature_names
        if set(names).issubset(map(str, features.columns)):
            return features.rename(columns=str)[names]
        if features.shape[1] != len(names):
            raise UserError(f"Expected {len(names)} feature columns but got {features.shape[1]}.")
        return features.set_axis(names, axis=1)

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        """Class probabilities (N, C) or regression predictions (N,) in target units."""
        data = encode_table(self.preprocessor, self.align(features))
        return to_prediction(predict_raw(self.model, data, self.device), self.target)

    def predict_labels(self, probabilities: np.ndarray) -> list[Any]:
        """The most probable original label of each row."""
        return [self.classes[i] for i in probabilities.argmax(axis=1)]

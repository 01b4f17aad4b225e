"""Inference: a table as tensors, batched forward passes, and the `Predictor` serving uses.

Imported by training (validation) and by serving alike; it knows nothing of optimisers,
checkpoints or processes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from tabtransformer.errors import UserError
from tabtransformer.model import Network, TabTransformerConfig
from tabtransformer.preprocessing import MISSING_CODE, TablePreprocessor, TargetEncoder

# Rows per evaluation forward pass, whatever batch_size is. On a CPU, batches whose
# activations stay in cache are fastest: at the paper's size 256 to 2048 rows predict
# about 1.6x faster than 8192. A GPU wants as many rows as it can take at once: up to
# EVAL_BATCH_ROWS_GPU, as many as keep one pass's activations within
# EVAL_ACTIVATION_BYTES_GPU (a wide table has fewer rows a pass than the paper's size).
EVAL_BATCH_ROWS = 1024
EVAL_BATCH_ROWS_GPU = 65536
EVAL_ACTIVATION_BYTES_GPU = 4 << 30


def activation_bytes_per_row(config: TabTransformerConfig) -> int:
    """A bound on the float32 activations one row holds at once in an evaluation pass: a
    block's tokens with their feed-forward hidden layer and attention weights, and every
    fold's and member's head layers."""
    m, d = config.n_tokens, config.dim
    block = m * (4 * d + 3 * d + d) + config.n_heads * m * m
    width = config.mlp_width
    hidden = min(4 * width, config.mlp_hidden_cap) if config.mlp_hidden_cap else 4 * width
    head = config.folds * config.ensemble_size * (width + hidden + hidden // 2)
    return 4 * (block + head)


def eval_batch_rows(device: torch.device, config: TabTransformerConfig | None = None) -> int:
    """Rows per forward pass when evaluating or predicting (no gradients: larger than the
    training batch). On a GPU: EVAL_BATCH_ROWS_GPU, or fewer for a network as wide as
    `config`'s (`activation_bytes_per_row`), never fewer than EVAL_BATCH_ROWS."""
    if device.type != "cuda":
        return EVAL_BATCH_ROWS
    if config is None:
        return EVAL_BATCH_ROWS_GPU
    fits = EVAL_ACTIVATION_BYTES_GPU // activation_bytes_per_row(config)
    return max(EVAL_BATCH_ROWS, min(EVAL_BATCH_ROWS_GPU, fits))


class DeadlinePassed(Exception):
    """A batched computation reached its deadline (`time.monotonic()`) and stopped."""


def check_deadline(deadline: float | None) -> None:
    """Raise DeadlinePassed once `time.monotonic()` is past `deadline` (None: never)."""
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlinePassed()


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

    def cell_pools(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The codes and numbers as pools of cells to draw from (`pool[rows, columns]`)."""
        return self.codes, self.numbers

    def to(self, device: torch.device, non_blocking: bool = False) -> Encoded:
        """On `device` (`non_blocking`: an asynchronous copy from pinned memory)."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=non_blocking)

        target = move(self.target) if self.target is not None else None
        return Encoded(move(self.codes), move(self.numbers), target)

    def pin_memory(self) -> Encoded:
        """A copy in page-locked host memory (fast, asynchronous copies to a GPU)."""
        target = self.target.pin_memory() if self.target is not None else None
        return Encoded(self.codes.pin_memory(), self.numbers.pin_memory(), target)


def encode_table(
    pre: TablePreprocessor, features: pd.DataFrame, target: np.ndarray | None = None
) -> Encoded:
    """Features (and optionally encoded labels) as tensors."""
    codes, numbers = pre.transform(features)
    labels = torch.from_numpy(target) if target is not None else None
    return Encoded(torch.from_numpy(codes), torch.from_numpy(numbers), labels)


def prediction_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """What a prediction runs under: bf16 autocast on GPUs that support it, float32
    elsewhere (training: `hardware.training_autocast`)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def _in_batches(
    model: Network,
    data: Encoded,
    device: torch.device,
    forward: Callable[[Encoded], torch.Tensor],
    empty: tuple[int, ...],
    deadline: float | None = None,
) -> torch.Tensor:
    """`forward` over batches of `eval_batch_rows` rows in evaluation mode, concatenated as
    float32 on the CPU; `empty` is the shape of one row's answer (for zero rows). Stops
    with DeadlinePassed before a batch that starts after `deadline`."""
    was_training = model.training
    model.eval()
    outs = []
    step = eval_batch_rows(device, model.config)
    for start in range(0, len(data), step):
        check_deadline(deadline)
        part = data.rows(slice(start, start + step)).to(device, non_blocking=True)
        with prediction_autocast(device):
            outs.append(forward(part).float().to("cpu", non_blocking=True))
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the non-blocking copies to the host have landed
    model.train(was_training)
    return torch.cat(outs) if outs else torch.zeros(0, *empty)


def predict_raw(
    model: Network, data: Encoded, device: torch.device, deadline: float | None = None
) -> torch.Tensor:
    """Model outputs (N, k, n_outputs) of the k ensemble members (of every fold) as float32
    on the CPU, in evaluation mode (DeadlinePassed after `deadline`)."""
    c = model.config
    return _in_batches(
        model,
        data,
        device,
        lambda p: model(p.codes, p.numbers),
        (c.folds * c.ensemble_size, c.n_outputs),
        deadline,
    )


def contextual_embeddings(
    model: Network,
    data: Encoded,
    device: torch.device,
    layer: int = -1,
    deadline: float | None = None,
) -> torch.Tensor:
    """Contextual embeddings (N, n_tokens, d) at `layer` (see `TabTransformer.contextual`)
    as float32 on the CPU, in evaluation mode (DeadlinePassed after `deadline`)."""
    c = model.config
    return _in_batches(
        model,
        data,
        device,
        lambda p: model.contextual(p.codes, p.numbers, layer=layer),
        (c.n_tokens, c.dim),
        deadline,
    )


def to_prediction(raw: torch.Tensor, target: TargetEncoder) -> np.ndarray:
    """Probabilities (N, C), or regression predictions in target units (N,): the mean over
    ensemble members (raw (N, k, n_outputs); (N, n_outputs) is one member) of their
    probabilities or values."""
    members = (raw if raw.ndim == 3 else raw.unsqueeze(1)).double()  # (N, k, n_outputs)
    if target.task == "regression":
        return target.decode_regression(members[:, :, 0].mean(dim=1).numpy())
    return torch.softmax(members, dim=2).mean(dim=1).numpy()


@dataclass
class Embeddings:
    """Each row's contextual embedding per token column: `values` (N, tokens, d) at depth
    `layer` (0 = before the Transformer, n_blocks = after its last block), the token
    columns named in `columns` (categorical ones, then numeric ones that are tokens)."""

    values: np.ndarray
    columns: list[str]
    layer: int


@dataclass
class Attributions:
    """Per row and feature column, `values` (N, F): the prediction (the probability of the
    row's predicted class, or the predicted value) minus the prediction with that column
    set to missing; positive: the column's value pushed towards the prediction."""

    values: np.ndarray
    columns: list[str]


def column_cells(pre: TablePreprocessor) -> list[tuple[list[int], list[int]]]:
    """For each feature column (in `feature_names` order), its positions in the codes
    (a categorical column, or a numeric column's bin token) and in the numbers."""
    categorical = {c.name: j for j, c in enumerate(pre.categorical)}
    numeric = {c.name: j for j, c in enumerate(pre.numeric)}
    cells = []
    for name in pre.feature_names:
        if name in categorical:
            cells.append(([categorical[name]], []))
        else:
            j = numeric[name]
            cells.append(([len(pre.categorical) + j] if pre.continuous_bins else [], [j]))
    return cells


class Predictor:
    """A trained TabTransformer with its preprocessing: `predict(DataFrame)`."""

    def __init__(
        self,
        model: Network,
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

    @property
    def folds(self) -> int:
        """How many cross-fitted networks predict (their mean); 1: one network."""
        return self.model.config.folds

    def align(self, features: pd.DataFrame) -> pd.DataFrame:
        """Columns by name when they match the training names, otherwise by position."""
        names = self.feature_names
        if set(names).issubset(map(str, features.columns)):
            return features.rename(columns=str)[names]
        if features.shape[1] != len(names):
            raise UserError(f"Expected {len(names)} feature columns but got {features.shape[1]}.")
        return features.set_axis(names, axis=1)

    def outputs(self, features: pd.DataFrame, deadline: float | None = None) -> np.ndarray:
        """What the endpoint answers: class probabilities (N, C) or regression predictions
        (N,) in target units. `deadline` (a `time.monotonic()` value): DeadlinePassed
        rather than run past it."""
        data = encode_table(self.preprocessor, self.align(features))
        raw = predict_raw(self.model, data, self.device, deadline)
        return to_prediction(raw, self.target)

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        """As scikit-learn's `predict`: each row's original label (classification, at the
        model's decision threshold: `predict_labels`) or its predicted value (regression)."""
        outputs = self.outputs(features)
        if self.task == "regression":
            return outputs
        return np.asarray(self.classes)[self.target.decide(outputs)]

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        """As scikit-learn's `predict_proba`: class probabilities (N, C), columns in
        `classes` order. A regression model has none (a UserError)."""
        if self.task == "regression":
            raise UserError(
                "This is a regression model: it has no class probabilities; use predict."
            )
        return self.outputs(features)

    @property
    def token_columns(self) -> list[str]:
        """The columns that are tokens, in the model's order: categorical columns, then
        numeric columns as bin tokens (continuous_bins) or as numeric tokens."""
        pre = self.preprocessor
        names = [c.name for c in pre.categorical]
        if pre.continuous_bins or self.model.config.numeric_tokens:
            names += [c.name for c in pre.numeric]
        return names

    def embed(
        self, features: pd.DataFrame, layer: int = -1, deadline: float | None = None
    ) -> Embeddings:
        """Each row's contextual embeddings per token column at `layer` (0: before the
        Transformer, -1: after its last block; a list index over n_blocks + 1 layers). A
        cross-fitted model gives its folds' mean (`folds`)."""
        config = self.model.config
        if not config.n_tokens:
            raise UserError(
                "This model has no token columns (no categorical column, and numeric columns "
                "are not tokens: numeric_embedding=none or numeric_attention=none), so it has "
                "no contextual embeddings."
            )
        n_layers = config.n_blocks + 1
        if not -n_layers <= layer < n_layers:
            raise UserError(
                f"layer {layer} is out of range: this model has layers 0 (before the "
                f"Transformer) to {n_layers - 1} (after its last block); -1 is the last."
            )
        data = encode_table(self.preprocessor, self.align(features))
        values = contextual_embeddings(self.model, data, self.device, layer, deadline)
        return Embeddings(values.numpy(), self.token_columns, layer % n_layers)

    def explain(self, features: pd.DataFrame, deadline: float | None = None) -> Attributions:
        """Per row and feature column, the prediction minus the prediction with that column
        set to what the model takes for missing: the missing token of a categorical column
        (and of a numeric column's bin token), the learned missing embedding of a numeric
        token, else the imputed median (0 on the N(0, 1) scale). Costs F + 1 forward passes
        per row (F feature columns), batched (`forward_passes`)."""
        data = encode_table(self.preprocessor, self.align(features))
        base = to_prediction(predict_raw(self.model, data, self.device, deadline), self.target)
        classify = self.task != "regression"
        chosen = self.target.decide(base) if classify else None
        base_value = base[np.arange(len(base)), chosen] if classify else base
        cells = column_cells(self.preprocessor)
        n_columns = len(cells)
        missing_number = np.nan if self.preprocessor.numeric_bins else 0.0
        values = np.empty((len(data), n_columns))
        rows_per_chunk = max(1, eval_batch_rows(self.device, self.model.config) // n_columns)
        for start in range(0, len(data), rows_per_chunk):
            part = data.rows(slice(start, start + rows_per_chunk))
            n, m, c = len(part), part.codes.shape[1], part.numbers.shape[1]
            codes = part.codes.repeat_interleave(n_columns, 0).view(n, n_columns, m).clone()
            numbers = part.numbers.repeat_interleave(n_columns, 0).view(n, n_columns, c).clone()
            for f, (code_positions, number_positions) in enumerate(cells):
                codes[:, f, code_positions] = MISSING_CODE
                numbers[:, f, number_positions] = missing_number
            masked = Encoded(codes.view(n * n_columns, m), numbers.view(n * n_columns, c))
            raw = predict_raw(self.model, masked, self.device, deadline)
            prediction = to_prediction(raw, self.target).reshape(n, n_columns, -1)
            if classify:
                picked = chosen[start : start + n, None, None]
                prediction = np.take_along_axis(prediction, picked, axis=2)
            values[start : start + n] = base_value[start : start + n, None] - prediction[..., 0]
        return Attributions(values, list(self.feature_names))

    def forward_passes(self, *, embeddings: bool = False, explain: bool = False) -> int:
        """Forward passes per row of a prediction, with embeddings and/or attributions."""
        return 1 + int(embeddings) + (len(self.feature_names) + 1) * int(explain)

    def predict_labels(self, probabilities: np.ndarray) -> list[Any]:
        """Each row's original label: binary, the second class where its probability is at
        least the decision threshold chosen in training (none: 0.5, the most probable);
        otherwise the most probable class."""
        return [self.classes[i] for i in self.target.decide(probabilities)]

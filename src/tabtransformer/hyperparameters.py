"""One declarative hyperparameter schema: names, types, ranges, defaults and help.

The same table validates `hyperparameters.json`, fills in defaults, writes the
repository's `hyperparameters.json` and generates the table in docs/hyperparameters.md
(`python -m tabtransformer hyperparameters --markdown`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tabtransformer.errors import UserError
from tabtransformer.options import (
    ENSEMBLE_HEADS,
    NUMERIC_ATTENTION,
    NUMERIC_EMBEDDINGS,
    NUMERIC_FLAGS,
    PRETRAINING_OBJECTIVES,
)

PLATFORM_KEY_PREFIXES = ("sagemaker_", "_tuning_objective_metric")
# Hyperparameters that no longer exist: the value that meant "off" (accepted and ignored,
# so old tuning configs still run) and what replaced them.
RETIRED = {
    "continuous_bins": (
        "0",
        "numeric columns become tokens through numeric_embedding (ple or periodic; "
        "pretraining then corrupts and predicts their quantile bins). A model trained with "
        "continuous_bins still loads, serves and fine-tunes.",
    ),
}
# The paper's network and recipe (6 blocks, numeric scalars into the MLP, one head, a
# constant learning rate of 3e-4, no clipping, early stopping after 15 epochs without
# improvement, and the dropout of 0.3 chosen for that network): these values over the
# defaults. Early stopping watches eval_metric=auto (the log loss on a binary task since
# 2026-12-08, AUC before).
PAPER_RECIPE = {
    "n_blocks": 6,
    "attn_dropout": 0.3,
    "mlp_dropout": 0.3,
    "numeric_embedding": "none",
    "ensemble_size": 1,
    "mlp_hidden_cap": 0,
    "lr_schedule": "constant",
    "warmup_epochs": 0.0,
    "grad_clip": 0.0,
    "patience": 15,
    "learning_rate": 3e-4,
}


@dataclass(frozen=True)
class Hyperparameter:
    """One entry of the schema. `low`/`high` bound numbers (inclusive unless `*_open`)."""

    name: str
    type: type
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[Any, ...] | None = None
    jumpstart_default: Any = None

    def allowed(self) -> str:
        """Human-readable description of the allowed values."""
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        kind = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
        text = kind[self.type]
        if self.low is not None and self.high is not None:
            left = "(" if self.low_open else "["
            text += f" in {left}{_fmt(self.low)}, {_fmt(self.high)}]"
        elif self.low is not None:
            text += f" {'>' if self.low_open else '>='} {_fmt(self.low)}"
        return text

    def parse(self, raw: Any) -> Any:
        """Convert a decoded JSON value to this parameter's type, or raise UserError."""
        value = self._convert(raw)
        if self.choices is not None and value not in self.choices:
            raise self._error(raw)
        if self.type in (int, float):
            if isinstance(value, float) and not math.isfinite(value):
                raise self._error(raw)
            too_low = self.low is not None and (
                value <= self.low if self.low_open else value < self.low
            )
            too_high = self.high is not None and value > self.high
            if too_low or too_high:
                raise self._error(raw)
        return value

    def _convert(self, raw: Any) -> Any:
        if self.type is bool:
            if isinstance(raw, bool):
                return raw
            if str(raw).strip().lower() in ("true", "1", "yes"):
                return True
            if str(raw).strip().lower() in ("false", "0", "no"):
                return False
            raise self._error(raw)
        if self.type in (int, float):
            if isinstance(raw, bool):  # true is not the number 1
                raise self._error(raw)
            try:
                number = float(raw)
            except (TypeError, ValueError, OverflowError):  # OverflowError: 400-digit ints
                raise self._error(raw) from None
            if self.type is float:
                return number
            if not number.is_integer():
                raise self._error(raw)
            return int(number)
        if isinstance(raw, str):
            return raw
        if isinstance(raw, (bool, int, float)):  # written unquoted in hyperparameters.json
            return json.dumps(raw) if isinstance(raw, bool) else str(raw)
        raise self._error(raw)  # an object, a list or null

    def _error(self, raw: Any) -> UserError:
        shown = repr(raw)
        if len(shown) > 80:
            shown = f"{shown[:60]}... ({len(shown)} characters)"
        return UserError(
            f"Hyperparameter '{self.name}' has the invalid value {shown}: "
            f"it must be {self.allowed()}."
        )


def _fmt(number: float) -> str:
    """1e-05 stays short; a whole number is written out (2147483647, not 2.14748e+09)."""
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


SCHEMA: tuple[Hyperparameter, ...] = (
    # --- JumpStart names, same meaning -------------------------------------------------
    Hyperparameter(
        "n_epochs",
        int,
        100,
        "Maximum number of fine-tuning epochs; early stopping usually ends training sooner.",
        low=1,
        high=100000,
        jumpstart_default=5,
    ),
    Hyperparameter(
        "patience",
        int,
        0,
        "Stop when the validation metric has not improved for this many epochs. 0 (auto): "
        "15 (the paper's) with at most 1000 labelled training rows, where the few-label "
        "recipe's folds stop on small hold-outs; else 10, which on the accuracy benchmark "
        "kept the same scores as 15 (33 of 36 runs bit for bit) in five fewer epochs a job.",
        low=0,
        high=1000,
        jumpstart_default=10,
    ),
    Hyperparameter(
        "learning_rate",
        float,
        0.0,
        "AdamW learning rate. 0 (auto): 3e-4 for a binary task, 1e-3 for multiclass and "
        "regression (the accuracy benchmark: the same or better scores there in 0.69 of "
        "the time; lower AUC on binary tables).",
        low=0.0,
        high=1.0,
        jumpstart_default=1e-3,
    ),
    Hyperparameter(
        "batch_size",
        int,
        256,
        "Rows per optimisation step. A table of fewer than 8 batches takes smaller batches "
        "(its training rows / 8, at least 16), so that an epoch has 8 steps.",
        low=1,
        high=65536,
        jumpstart_default=256,
    ),
    Hyperparameter(
        "input_dim",
        int,
        32,
        "Embedding size d of each categorical column (paper: 32).",
        choices=(8, 16, 32, 64, 128, 256, 512),
        jumpstart_default=32,
    ),
    Hyperparameter(
        "n_blocks",
        int,
        3,
        "Number of Transformer encoder blocks (paper: 6; with numeric columns as tokens, 3 "
        "were within single-seed noise of 6 on the accuracy benchmark, in three quarters of "
        "the time). 0: no Transformer, the column embeddings go straight to the MLP (the "
        "paper's MLP baseline).",
        low=0,
        high=24,
        jumpstart_default=4,
    ),
    Hyperparameter(
        "attn_dropout",
        float,
        0.1,
        "Dropout on the attention weights (0.3 with the paper's network, PAPER_RECIPE; 0.1 "
        "with numeric tokens and the ensemble head, measured in the accuracy benchmark).",
        low=0.0,
        high=0.9,
        jumpstart_default=0.2,
    ),
    Hyperparameter(
        "mlp_dropout",
        float,
        0.1,
        "Dropout in the Transformer feed-forward layers and the final MLP (0.3 with the "
        "paper's network, PAPER_RECIPE).",
        low=0.0,
        high=0.9,
        jumpstart_default=0.1,
    ),
    Hyperparameter(
        "frac_shared_embed",
        float,
        0.125,
        "Fraction of each embedding that is shared by all values of a column (paper: 1/8).",
        low=0.0,
        high=0.5,
        jumpstart_default=0.25,
    ),
    # --- this project's own ----------------------------------------------------------
    Hyperparameter(
        "n_heads",
        int,
        8,
        "Attention heads per block (paper: 8); must divide input_dim.",
        low=1,
        high=64,
    ),
    Hyperparameter(
        "continuous_norm",
        str,
        "none",
        "Normalisation of the continuous "
        "features before the MLP. 'layer': the paper's per-row LayerNorm. 'none': "
        "each column is already quantile-normalised, and per-row LayerNorm erases "
        "each row's mean and spread across columns (see docs/hyperparameters.md, "
        "'Why these defaults').",
        choices=("none", "layer"),
    ),
    Hyperparameter("weight_decay", float, 1e-4, "AdamW weight decay.", low=0.0, high=1.0),
    Hyperparameter(
        "seed",
        int,
        0,
        "Random seed for the hold-out split, initialisation and batching.",
        low=0,
        high=2**31 - 1,
    ),
    Hyperparameter(
        "task",
        str,
        "auto",
        "Learning task; 'auto' detects it like JumpStart: "
        "integer or text labels with at most `max_classes` distinct values are "
        "classes, more distinct integers or any other numbers are regression, and more "
        "distinct text labels are a ClientError (name the task).",
        choices=("auto", "binary", "multiclass", "regression"),
    ),
    Hyperparameter(
        "max_classes",
        int,
        20,
        "With task=auto, the most distinct integer or text labels that still count as classes.",
        low=2,
        high=10000,
    ),
    Hyperparameter(
        "target_column",
        str,
        "",
        "Name of the target column. Empty: files have "
        "no header row and the target is column 0 (JumpStart layout). Set: every "
        "CSV file has a header row naming its columns.",
    ),
    Hyperparameter(
        "validation_fraction",
        float,
        0.2,
        "Share of training rows held out for early stopping when there is no `validation` channel.",
        low=0.0,
        high=0.5,
        low_open=True,
    ),
    Hyperparameter(
        "cv_folds",
        int,
        0,
        "Cross-fitted models: k >= 2 splits the labelled training rows into k stratified "
        "folds (seeded); model i trains on the others and early-stops on fold i, so every "
        "row trains; the job's validation metrics are the out-of-fold predictions' (with a "
        "'validation' channel: the fold models' mean on it); the artifact holds the k "
        "models and predicts their mean. 1: one model and a validation_fraction hold-out. "
        "0 (auto): 5 with at most 1000 labelled training rows, else 1.",
        low=0,
        high=20,
    ),
    Hyperparameter(
        "fold_starts",
        str,
        "auto",
        "Where cross-fitted models start when the job fine-tunes a pretrained encoder (its "
        "own pretraining, or a pretraining-only artifact in the 'model' channel): "
        "'pretrained' — every fold from the encoder; 'pretrained_and_fresh' — the k folds "
        "from the encoder and k fresh networks on the same folds, all 2k served as one mean "
        "(twice the fine-tuning). auto: pretrained_and_fresh when there are cross-fitted "
        "models and a pretrained encoder, else pretrained (on the semi-supervised benchmark "
        "the mix beat both kinds alone, on the mean of three tables, at 50, 200 and 500 "
        "labels).",
        choices=("auto", "pretrained", "pretrained_and_fresh"),
    ),
    Hyperparameter(
        "eval_metric",
        str,
        "auto",
        "Validation metric for early stopping and "
        "model selection. auto: log_loss (binary and multiclass: smoother than AUC or "
        "accuracy on a held-out set, so the epoch kept depends less on chance), rmse "
        "(regression). Every metric of the task is reported either way.",
        choices=("auto", "auc", "log_loss", "accuracy", "f1", "rmse", "mae", "r2"),
    ),
    Hyperparameter(
        "freeze_encoder_epochs",
        int,
        0,
        "Fine-tuning from pretrained weights (an 'unlabeled' channel or a 'model' channel): "
        "the embeddings and Transformer stay as pretrained for the first N epochs while the "
        "new prediction head learns, then everything trains (linear probing, then "
        "fine-tuning). 0: everything trains from the first step. A fresh network ignores it.",
        low=0,
        high=1000,
    ),
    Hyperparameter(
        "decision_threshold",
        float,
        0.0,
        "Binary classification: the positive (second) class's probability from which it is "
        "the predicted label, for predicted_label, predict() and the f1 and accuracy "
        "metrics. 0 (auto): chosen each epoch and at the end to maximise F1 on the rows the "
        "metrics are computed on (out-of-fold, the hold-out or the validation channel) and "
        "stored in the artifact (metrics.json shows it). 0.5: the most probable class "
        "(argmax). Other tasks: the most probable class.",
        low=0.0,
        high=1.0,
    ),
    # --- semi-supervised pretraining (paper section 3.2) ----------------------------------
    Hyperparameter(
        "pretrain_objective",
        str,
        "auto",
        "Pretraining on unlabeled rows before fine-tuning: 'mlm' (masked language "
        "modelling), 'rtd' (replaced token detection) or 'none'. auto: rtd for a job that "
        "only pretrains (pretrain_only, or no 'training' channel); with labels and an "
        "'unlabeled' channel, rtd when the job has at most 100 labelled rows, no 'model' "
        "channel, a column to pretrain on and every row on every host, else none (the "
        "unlabeled rows then inform the preprocessing only); its cross-fitted models then "
        "start from the pretrained encoder and fresh (fold_starts).",
        choices=("auto", "none", *PRETRAINING_OBJECTIVES),
    ),
    Hyperparameter(
        "pretrain_only",
        bool,
        False,
        "Only pretrain and write a pretrained artifact, to be fine-tuned by later jobs "
        "through their 'model' channel. Implied when there is no 'training' channel.",
    ),
    Hyperparameter(
        "pretrain_epochs",
        int,
        200,
        "Maximum pretraining epochs (the run lasts fewer when pretrain_steps is reached first).",
        low=1,
        high=10000,
    ),
    Hyperparameter(
        "pretrain_steps",
        int,
        3000,
        "Planned pretraining optimizer steps: pretraining lasts min(pretrain_epochs, "
        "ceil(pretrain_steps / steps per epoch)) epochs, so a small unlabeled table gets many "
        "epochs and a large one is not cut short; the learning-rate schedule spans that run. "
        "0: pretrain_epochs alone. The default fine-tunes as well as 10,000 steps did on the "
        "semi-supervised benchmark, in under a third of the time.",
        low=0,
        high=100_000_000,
    ),
    Hyperparameter(
        "pretrain_patience",
        int,
        10,
        "Stop pretraining when the loss on held-out unlabeled rows (under a fixed corruption) "
        "has not improved for this many epochs.",
        low=1,
        high=1000,
    ),
    Hyperparameter(
        "pretrain_lr_schedule",
        str,
        "cosine",
        "Pretraining learning rate: linear warm-up over the first 5% of the planned run, "
        "then 'cosine' decay to 0 at its end, or 'constant'.",
        choices=("constant", "cosine"),
    ),
    Hyperparameter(
        "pretrain_columns",
        str,
        "auto",
        "Which columns pretraining corrupts and predicts. 'categorical': the paper's method; "
        "numeric tokens enter pretraining as missing. 'all': with numeric_embedding=ple or "
        "periodic, numeric cells too (RTD swaps in another row's value of the column; MLM "
        "masks the cell with the column's missing embedding and predicts its bin among the "
        "column's bin edges). 'auto': categorical when the table has categorical columns, "
        "else all (on the semi-supervised benchmark categorical-only RTD fine-tuned 1.8 AUC "
        "points above every-column RTD at 200 labels, the mean of three tables). The same "
        "without numeric tokens.",
        choices=("auto", "all", "categorical"),
    ),
    Hyperparameter(
        "pretrain_batch_size",
        int,
        512,
        "Rows per pretraining step (unlabeled tables are usually large).",
        low=1,
        high=65536,
    ),
    Hyperparameter(
        "pretrain_learning_rate",
        float,
        1e-3,
        "AdamW learning rate for pretraining.",
        low=0.0,
        high=1.0,
        low_open=True,
    ),
    Hyperparameter(
        "corruption_rate",
        float,
        0.3,
        "Share k of the cells corrupted in each row by MLM or RTD (paper: 0.3).",
        low=0.0,
        high=1.0,
        low_open=True,
    ),
    # --- unlabeled rows while fine-tuning ------------------------------------------------
    Hyperparameter(
        "semi_supervised",
        str,
        "none",
        "Use the 'unlabeled' channel's rows while fine-tuning a classifier: each labelled "
        "batch is joined by as many unlabeled rows, and their loss times "
        "semi_supervised_weight is added. 'entropy': minimise the mean entropy of the "
        "predictions (entropy regularisation). 'pseudo_label': cross-entropy toward the "
        "model's own prediction where it is at least pseudo_label_threshold confident "
        "(recomputed each batch, no gradient through the target). 'none': labelled rows "
        "only. Classification only; needs an 'unlabeled' channel.",
        choices=("none", "entropy", "pseudo_label"),
    ),
    Hyperparameter(
        "semi_supervised_weight",
        float,
        0.5,
        "Weight of the unlabeled loss (semi_supervised) beside the labelled loss.",
        low=0.0,
        high=100.0,
    ),
    Hyperparameter(
        "pseudo_label_threshold",
        float,
        0.9,
        "semi_supervised=pseudo_label: the least predicted probability of a class for an "
        "unlabeled row to count as that class.",
        low=0.0,
        high=1.0,
        low_open=True,
    ),
    # --- numeric tokens, ensemble head and training recipe: defaults from the accuracy
    # benchmark (docs/benchmarks.md); PAPER_RECIPE (n_blocks=6, dropout 0.3, numeric_embedding=none
    # ensemble_size=1 mlp_hidden_cap=0 lr_schedule=constant warmup_epochs=0 grad_clip=0) is
    # the paper's ---------------------------------------------------------------------------
    Hyperparameter(
        "numeric_embedding",
        str,
        "auto",
        "'none': each numeric column reaches the MLP as one quantile-normalised scalar, "
        "bypassing the Transformer (paper). 'ple' (piecewise-linear encoding over the "
        "column's quantile bins) or 'periodic' (PLR: periodic, linear, ReLU): each numeric "
        "column becomes a d-dimensional token beside the categorical ones, so attention mixes "
        "them; a missing number gets a learned per-column missing embedding instead of the "
        "median (Gorishniy et al. 2022, rtdl_num_embeddings). 'auto': 'periodic' for binary "
        "classification, 'ple' otherwise (regression, multiclass, and a job that pretrains, "
        "with labels or without), as measured in the accuracy and semi-supervised "
        "benchmarks.",
        choices=("auto", *NUMERIC_EMBEDDINGS),
    ),
    Hyperparameter(
        "numeric_bins",
        int,
        32,
        "With numeric_embedding=ple or periodic: the most quantile bins per numeric column "
        "(fitted on the training rows, saved in preprocessing.json).",
        low=2,
        high=1024,
    ),
    Hyperparameter(
        "frequency_init_scale",
        float,
        0.1,
        "With numeric_embedding=periodic (PLR): the standard deviation sigma of the normal "
        "distribution the periodic features' frequencies start from (they are learned "
        "after). Numbers arrive quantile-normalised onto N(0, 1): a small sigma starts "
        "every column almost linear, a large one wiggly. rtdl_num_embeddings' default is "
        "0.01; 0.1 was better on the accuracy benchmark's binary tables (docs/benchmarks.md).",
        low=0.0,
        high=100.0,
        low_open=True,
    ),
    Hyperparameter(
        "numeric_attention",
        str,
        "auto",
        "With numeric_embedding=ple or periodic, how far the numeric columns' tokens go "
        "through the Transformer: 'all' blocks, the 'first' block only (then they wait while "
        "the categorical tokens go on, and rejoin them for the MLP), or 'none' (the "
        "embeddings skip the Transformer and reach the MLP directly, the paper's layout with "
        "embedded numbers). Each block a numeric token skips saves what a categorical token "
        "costs there. 'auto': 'none' for a regression table with categorical columns, "
        "'first' otherwise, and 'all' in a job that pretrains or a table without "
        "categorical columns, as measured in the accuracy benchmark (the same accuracy in "
        "0.3-0.6x the fit time).",
        choices=("auto", *NUMERIC_ATTENTION),
    ),
    Hyperparameter(
        "numeric_flags",
        str,
        "auto",
        "With numeric tokens through the Transformer, what the numeric columns with at most "
        "two values in training (flags: yes/no, 0/1) do: 'attend' like every other numeric "
        "token, or 'skip' every block (their embeddings wait, unchanged, and rejoin the other "
        "tokens for the MLP), which saves what a token costs in attention. 'auto': 'skip' "
        "where numeric_attention is 'first', 'attend' otherwise, as measured in the accuracy "
        "benchmark.",
        choices=("auto", *NUMERIC_FLAGS),
    ),
    Hyperparameter(
        "ensemble_size",
        int,
        8,
        "k prediction heads (MLPs, each initialised on its own; see ensemble_head) over the one "
        "Transformer, trained on the same batches (TabM-style). The prediction is the mean of "
        "the members' probabilities (or values), the loss the mean of their losses. 1: the "
        "paper's single head. Fine-tuning from a 'model' channel takes it (and "
        "ensemble_head, mlp_hidden_cap) from the fine-tuning job: k fine-tuned heads over one "
        "pretrained Transformer.",
        low=1,
        high=64,
    ),
    Hyperparameter(
        "ensemble_head",
        str,
        "plain",
        "With ensemble_size > 1: 'plain', k independent MLPs (tabm.LinearEnsemble); "
        "'batchensemble', TabM's BatchEnsemble MLP (tabm.LinearBatchEnsemble: one shared "
        "weight per hidden layer with per-member scalings, a per-member output layer; fewer "
        "parameters, same compute).",
        choices=ENSEMBLE_HEADS,
    ),
    Hyperparameter(
        "mlp_hidden_cap",
        int,
        128,
        "Cap on the MLP's first hidden width (the paper's 4l, l = the MLP's input width; the "
        "second stays half of the first). Keeps wide tables' heads small. 0: no cap (paper).",
        low=0,
        high=1_000_000,
    ),
    Hyperparameter(
        "lr_schedule",
        str,
        "cosine",
        "Learning rate over fine-tuning: 'constant', or 'cosine' decay to 0 at n_epochs "
        "(early stopping may end training before). Both start with warmup_epochs of linear "
        "warm-up.",
        choices=("constant", "cosine"),
    ),
    Hyperparameter(
        "warmup_epochs",
        float,
        1.0,
        "Epochs of linear learning-rate warm-up from 0 at the start of fine-tuning (may be "
        "fractional). 0: none.",
        low=0.0,
        high=1000.0,
    ),
    Hyperparameter(
        "grad_clip",
        float,
        1.0,
        "Clip the gradient's global L2 norm to this value before each fine-tuning step. "
        "0: no clipping.",
        low=0.0,
        high=1e6,
    ),
    # --- what the model learned -------------------------------------------------------
    Hyperparameter(
        "report",
        bool,
        True,
        "Write a training report to output/data/ at the end of the job: report.html "
        "(self-contained) and its PNGs (learning curves, t-SNE of the contextual embeddings, "
        "permutation importance, task plots). Sampled so that it takes about a tenth of the "
        "training time; a report error is a warning, never a failed job. false: no report "
        "and no learning-curve PNGs (the per-epoch histories are still written as CSV).",
    ),
    # --- speed --------------------------------------------------------------------------
    Hyperparameter(
        "compile",
        bool,
        False,
        "torch.compile the network for pretraining and fine-tuning (validation and serving "
        "run eagerly). Compiling takes a minute or more at the start. Meant for GPUs: on the "
        "CPUs measured, the eager network (tuned for CPUs) was faster. If compiling fails "
        "(e.g. no C++ compiler on the machine), the job logs a warning and trains eagerly, "
        "with the same results.",
    ),
)

BY_NAME: dict[str, Hyperparameter] = {p.name: p for p in SCHEMA}


def defaults() -> dict[str, Any]:
    """Every hyperparameter at its default value."""
    return {p.name: p.default for p in SCHEMA}


def _decode(raw: Any, kind: type) -> Any:
    """SageMaker passes strings, and the Python SDK JSON-encodes them once more.

    For a string parameter, text that decodes to a number, true/false or null stays the
    text it is (a column may be named "1e3" or "null"); a JSON object or list does not.
    """
    if not isinstance(raw, str):
        return raw
    try:
        decoded = json.loads(raw)
    except (ValueError, RecursionError):
        return raw
    if kind is str and not isinstance(decoded, (str, dict, list)):
        return raw
    return decoded


def _retired(key: str, raw_value: Any) -> None:
    """A retired hyperparameter at its old default is ignored; any other value is a
    UserError saying what replaced it."""
    off, replacement = RETIRED[key]
    if str(raw_value).strip().strip('"') != off:
        raise UserError(f"Hyperparameter '{key}' is retired: {replacement}")


def parse(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a hyperparameter map as SageMaker writes it and fill in defaults."""
    if not isinstance(raw, Mapping):
        raise UserError(
            "hyperparameters.json must be a JSON object of name: value pairs, like "
            f'{{"n_epochs": "20"}}; got {json.dumps(raw)[:100]}.'
        )
    values = defaults()
    unknown = []
    for key, raw_value in raw.items():
        if key.startswith(PLATFORM_KEY_PREFIXES):
            continue
        if key in RETIRED:
            _retired(key, raw_value)
            continue
        if key not in BY_NAME:
            unknown.append(key)
            continue
        param = BY_NAME[key]
        values[key] = param.parse(_decode(raw_value, param.type))
    if unknown:
        raise UserError(
            f"Unknown hyperparameter(s): {', '.join(sorted(unknown))}. "
            f"Valid names: {', '.join(sorted(BY_NAME))}."
        )
    if values["input_dim"] % values["n_heads"]:
        raise UserError(
            f"Hyperparameter 'n_heads' ({values['n_heads']}) must divide 'input_dim' "
            f"({values['input_dim']})."
        )
    return values


def markdown_table() -> str:
    """The hyperparameter table of docs/hyperparameters.md, generated from the schema."""
    lines = [
        "| name | type | default | JumpStart default | allowed | meaning |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for p in SCHEMA:
        js = "" if p.jumpstart_default is None else f"`{p.jumpstart_default}`"
        lines.append(
            f"| `{p.name}` | {p.type.__name__} | `{p.default!r}` | {js} | {p.allowed()} "
            f"| {p.help} |"
        )
    return "\n".join(lines)

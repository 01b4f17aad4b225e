"""Supervised fine-tuning: AdamW on the task's loss, early stopping on a validation metric.

The whole table is encoded once into tensors; batches are index slices of those tensors,
so the loop has no per-row Python. bf16 autocast where it pays
(`hardware.training_autocast`). The epoch loop itself (resume, best weights, log line,
patience) is `loop.run_epochs`. The learning rate follows `schedule.learning_rate_factor`
batch by batch; gradients may be clipped. With an ensemble head the loss is the mean of
the members' losses.

Semi-supervised fine-tuning (`semi_supervised`, classifiers): each labelled batch is joined
by a batch of unlabeled rows in the same forward pass, and `unlabeled_loss` on their
outputs, times `semi_supervised_weight`, is added to the labelled loss.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tabtransformer import metrics
from tabtransformer.checkpoints import Checkpointer
from tabtransformer.distributed import World, wrap
from tabtransformer.errors import UserError
from tabtransformer.hardware import (
    CPU_BF16_MIN_TOKENS,
    compiled,
    cpu_trains_in_bf16,
    gather,
    place,
    training_autocast,
    training_head_dtype,
)
from tabtransformer.inference import Encoded, predict_raw, to_prediction
from tabtransformer.loop import LoopSettings, adamw, batches, optimizer_step, run_epochs
from tabtransformer.model import Network, TabTransformer
from tabtransformer.preprocessing import TargetEncoder
from tabtransformer.schedule import learning_rate_factor, set_learning_rate
from tabtransformer.settings import PhaseSettings

log = logging.getLogger(__name__)
MIN_STEPS_PER_EPOCH = 8
MIN_BATCH_ROWS = 16
# patience=auto: PATIENCE epochs without improvement end fine-tuning; with few labelled rows
# (the few-label recipe, whose folds stop on 40-200 held-out rows) FEW_LABEL_PATIENCE, the
# paper's value, at which that recipe was measured (docs/benchmarks.md).
PATIENCE = 10
FEW_LABEL_PATIENCE = 15
# learning_rate=auto, by task: on the accuracy benchmark 1e-3 kept the regression tables'
# scores and raised hpc_data's (multiclass, +0.011) in 0.69 of the time, and cost the
# binary tables 0.002 AUC (docs/hyperparameters.md).
LEARNING_RATE = {"binary": 3e-4, "multiclass": 1e-3, "regression": 1e-3}
THRESHOLD = "decision_threshold"  # binary: a validation score beside the metrics


@dataclass(frozen=True)
class FitSettings:
    """What fine-tuning reads: the loop and optimiser settings, the resolved metric, the
    learning-rate schedule and gradient clipping (the defaults: the paper's recipe)."""

    eval_metric: str  # never "auto"
    phase: PhaseSettings
    lr_schedule: str = "constant"  # "constant" or "cosine"
    warmup_epochs: float = 0.0  # linear warm-up from 0 (may be fractional)
    grad_clip: float = 0.0  # > 0: clip the gradient's global L2 norm to this
    semi_supervised: str = "none"  # "none", "entropy" or "pseudo_label"
    semi_supervised_weight: float = 0.5
    pseudo_label_threshold: float = 0.9
    folds: int = 1  # cross-fitted models (crossfit.py); 1: one model
    fresh_folds: bool = False  # k more cross-fitted models that start fresh (fold_starts)
    decision_threshold: float = 0.0  # binary; 0: the F1-best on the scored rows
    freeze_encoder_epochs: int = 0  # epochs the pretrained encoder stays fixed (fit)

    def learning_rate(self, progress: float) -> float:
        """The learning rate after `progress` epochs (fractional) of fine-tuning."""
        factor = learning_rate_factor(
            progress, self.phase.n_epochs, self.warmup_epochs, self.lr_schedule
        )
        return self.phase.learning_rate * factor

    @classmethod
    def from_hyperparameters(
        cls, hp: Mapping[str, Any], task: str, has_unlabeled: bool = False, few_labels: bool = False
    ) -> FitSettings:
        """Resolve eval_metric=auto for `task` (metrics.DEFAULT_EVAL_METRIC), or check
        that the metric applies to it; resolve patience=auto (0: PATIENCE,
        FEW_LABEL_PATIENCE with `few_labels`) and learning_rate=auto (0: the task's
        LEARNING_RATE); check that semi_supervised has what it needs (a classifier,
        unlabeled rows)."""
        check_semi_supervised(hp["semi_supervised"], task, has_unlabeled)
        name = hp["eval_metric"]
        if name == "auto":
            name = metrics.DEFAULT_EVAL_METRIC[task]
        elif task not in metrics.BY_NAME[name].tasks:
            raise UserError(
                f"eval_metric={name} does not apply to task {task}; use one of "
                f"{[m.name for m in metrics.for_task(task)]} or auto."
            )
        phase = PhaseSettings.fine_tuning(hp)
        if phase.patience == 0:
            phase = replace(phase, patience=FEW_LABEL_PATIENCE if few_labels else PATIENCE)
        if phase.learning_rate == 0:
            phase = replace(phase, learning_rate=LEARNING_RATE[task])
        return cls(
            name,
            phase,
            hp["lr_schedule"],
            hp["warmup_epochs"],
            hp["grad_clip"],
            hp["semi_supervised"],
            hp["semi_supervised_weight"],
            hp["pseudo_label_threshold"],
            decision_threshold=hp["decision_threshold"],
            freeze_encoder_epochs=hp["freeze_encoder_epochs"],
        )


def check_semi_supervised(mode: str, task: str, has_unlabeled: bool) -> None:
    """semi_supervised needs a classification task and an `unlabeled` channel."""
    if mode == "none":
        return
    if task == "regression":
        raise UserError(
            f"semi_supervised={mode} applies to classification only, and this job's task is "
            "regression: set semi_supervised=none (pretraining on the unlabeled rows still "
            "works for regression)."
        )
    if not has_unlabeled:
        raise UserError(
            f"semi_supervised={mode} learns from unlabeled rows, and this job has no "
            "'unlabeled' channel: add one (feature columns only) or set semi_supervised=none."
        )


def loss_fn(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The mean over ensemble members of each member's loss: outputs (B, k, n_outputs)
    (or (B, n_outputs), one member) against targets (B,)."""

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = (out if out.ndim == 3 else out.unsqueeze(1)).float()  # (B, k, n_outputs)
        k = out.shape[1]
        if task == "regression":
            return F.mse_loss(out[:, :, 0], y[:, None].expand(-1, k))
        return F.cross_entropy(out.flatten(0, 1), y.repeat_interleave(k))

    return loss


def unlabeled_loss(mode: str, out: torch.Tensor, threshold: float) -> torch.Tensor:
    """The loss on unlabeled rows' outputs (B, k, classes), the mean over ensemble members.

    entropy: the mean entropy of each member's predicted distribution. pseudo_label: each
    member's cross-entropy toward the class the members' mean probability names, on rows
    where that probability is >= `threshold` (the target carries no gradient), averaged
    over all B rows (so fewer confident rows weigh less).
    """
    log_p = out.float().log_softmax(-1)
    if mode == "entropy":
        return -(log_p.exp() * log_p).sum(-1).mean()
    with torch.no_grad():
        confidence, label = log_p.exp().mean(1).max(-1)
        confident = (confidence >= threshold).float()
    k = log_p.shape[1]
    nll = -log_p.gather(-1, label[:, None, None].expand(-1, k, 1)).squeeze(-1).mean(1)
    return (nll * confident).mean()


def unlabeled_batches(
    n_unlabeled: int,
    n_batches: int,
    batch_size: int,
    generator: torch.Generator,
    world: World | None = None,
) -> torch.Tensor:
    """Row indexes (n_batches, batch_size) of the unlabeled rows to join each labelled
    batch of an epoch, drawn with replacement; with several processes, this one's draw."""
    world = world or World()
    draws = torch.randint(n_unlabeled, (world.size, n_batches, batch_size), generator=generator)
    return draws[world.rank]


def validation_scores(
    model: Network,
    data: Encoded,
    target: TargetEncoder,
    device: torch.device,
    decision: float = 0.0,
) -> dict[str, float]:
    """Loss (the mean of the ensemble members' losses) and every registered metric of the
    task (on the members' averaged prediction) on a labelled table; binary: the label
    metrics at the decision threshold (`decision`, 0: the F1-best here), itself a score."""
    return scores_of(predict_raw(model, data, device), data.target, target, decision)


def scores_of(
    raw: torch.Tensor, y: torch.Tensor, target: TargetEncoder, decision: float = 0.0
) -> dict[str, float]:
    """`validation_scores` of raw outputs (N, k, n_outputs) against encoded targets (N,)."""
    result = {"loss": float(loss_fn(target.task)(raw, y))}
    labels = y.numpy()
    prediction = to_prediction(raw, target)
    threshold = None
    if target.task == "regression":
        labels = target.decode_regression(labels.astype(np.float64))
    elif target.task == "binary":
        threshold = decision or metrics.f1_best_threshold(labels, prediction[:, 1])
    result.update(metrics.compute_all(target.task, labels, prediction, threshold))
    if threshold is not None:
        result[THRESHOLD] = threshold
    return result


def batch_rows(batch_size: int, n_rows: int) -> int:
    """Rows per fine-tuning step: `batch_size`, or fewer on a table of fewer than
    MIN_STEPS_PER_EPOCH batches (n_rows / MIN_STEPS_PER_EPOCH, at least MIN_BATCH_ROWS), so
    that a few hundred labelled rows still take several steps an epoch."""
    return min(batch_size, max(MIN_BATCH_ROWS, n_rows // MIN_STEPS_PER_EPOCH))


@dataclass(frozen=True)
class FitData:
    """The rows fine-tuning learns from: labelled training and validation rows, their
    target encoding, unlabeled rows (semi_supervised) and, when each host trains on its
    own rows, how many each process takes an epoch."""

    train: Encoded
    valid: Encoded
    target: TargetEncoder
    unlabeled: Encoded | None = None
    rows_per_rank: int | None = None


@dataclass(frozen=True)
class Saved:
    """What a fine-tuning checkpoint holds: its phase name and the module whose weights it
    saves (the network trained, or the cross-fitted whole it is one fold of); `label`:
    what a progress bar calls the phase."""

    phase: str
    module: nn.Module
    label: str = "fine-tune"


def fit(
    model: TabTransformer,
    data: FitData,
    settings: FitSettings,
    device: torch.device,
    checkpointer: Checkpointer | None = None,
    saved: Saved | None = None,
) -> tuple[list[dict[str, float]], int]:
    """Train with early stopping on `settings.eval_metric`; leaves the best weights in `model`.

    With `settings.semi_supervised` other than none, the unlabeled rows (features only)
    join every batch. The processes are `checkpointer`'s; it resumes and saves each epoch
    (`saved`; default: phase "finetune", the model). Returns the per-epoch history (train
    loss, with the weighted unlabeled loss, and validation metrics) and the best epoch.
    """
    checkpointer = checkpointer or Checkpointer(None)
    world = checkpointer.world
    train, valid, target, unlabeled = data.train, data.valid, data.target, data.unlabeled
    phase = settings.phase
    generator = torch.Generator().manual_seed(phase.seed)
    model.to(device).train()
    frozen_epochs = settings.freeze_encoder_epochs
    if frozen_epochs:  # two groups: the encoder's (group 0) learning rate is 0 at first
        groups = [{"params": model.encoder_parameters()}, {"params": model.head_parameters()}]
        optimizer = adamw(groups, phase, device)
        log.info("the pretrained encoder stays fixed for %d epoch(s)", frozen_epochs)
    else:
        optimizer = adamw(model.parameters(), phase, device)
    saved = saved or Saved("finetune", model)
    checkpoint = checkpointer.phase(saved.phase, saved.module, optimizer, [generator])
    start = checkpoint.restore()  # before DDP shares the first process's weights
    # DistributedDataParallel when there are several processes; compiled on request.
    forward = compiled(wrap(model, world), phase.compile)
    if cpu_trains_in_bf16(device, model.config.n_tokens):
        log.info(
            "training under bf16 autocast: %d tokens (at least %d) on a CPU with native bf16",
            model.config.n_tokens,
            CPU_BF16_MIN_TOKENS,
        )
    model.head_dtype = training_head_dtype(device, model.config.n_tokens)
    if model.head_dtype is not None:
        log.info("the prediction head trains in bf16 (a CPU with native bf16)")
    criterion = loss_fn(target.task)
    train_rows, train_at = place(train, device)  # on a GPU when it fits there
    semi = settings.semi_supervised != "none" and unlabeled is not None and len(unlabeled) > 0
    unlabeled_rows, unlabeled_at = place(unlabeled, device) if semi else (None, None)
    if semi:
        log.info(
            "fine-tuning with semi_supervised=%s on %d unlabeled rows (weight %g%s)",
            settings.semi_supervised,
            len(unlabeled),
            settings.semi_supervised_weight,
            f", threshold {settings.pseudo_label_threshold:g}"
            if settings.semi_supervised == "pseudo_label"
            else "",
        )
    epoch = start.epoch  # the last finished epoch; each train_epoch() runs the next one
    batch_size = batch_rows(phase.batch_size, data.rows_per_rank or len(train_rows) // world.size)
    if batch_size != phase.batch_size:
        log.info(
            "batches of %d rows (batch_size=%d): %d training rows make %d steps an epoch",
            batch_size,
            phase.batch_size,
            len(train_rows),
            math.ceil(len(train_rows) / world.size / batch_size),
        )

    def train_epoch() -> Iterator[tuple[torch.Tensor, int]]:
        nonlocal epoch
        epoch += 1
        epoch_batches = batches(
            len(train_rows), batch_size, generator, world, train_at, data.rows_per_rank
        )
        if semi:
            extra = unlabeled_batches(
                len(unlabeled_rows), len(epoch_batches), batch_size, generator, world
            ).to(unlabeled_at)
        for step, index in enumerate(epoch_batches):
            progress = epoch - 1 + (step + 1) / len(epoch_batches)
            set_learning_rate(optimizer, settings.learning_rate(progress))
            if epoch <= frozen_epochs:
                optimizer.param_groups[0]["lr"] = 0.0  # the encoder stays as pretrained
            batch = gather(train_rows, index, device)
            codes, numbers = batch.codes, batch.numbers
            if semi:  # one forward pass over the labelled and the unlabeled rows
                rows = gather(unlabeled_rows, extra[step], device)
                codes, numbers = torch.cat([codes, rows.codes]), torch.cat([numbers, rows.numbers])
            with training_autocast(device, model.config.n_tokens):
                out = forward(codes, numbers)
            loss = criterion(out[: len(index)], batch.target)
            if semi:
                extra_loss = unlabeled_loss(
                    settings.semi_supervised, out[len(index) :], settings.pseudo_label_threshold
                )
                loss = loss + settings.semi_supervised_weight * extra_loss
            yield optimizer_step(optimizer, loss, settings.grad_clip), len(index)

    loop_settings = LoopSettings(
        n_epochs=phase.n_epochs,
        patience=phase.patience,
        watch=settings.eval_metric,
        higher_is_better=metrics.BY_NAME[settings.eval_metric].higher_is_better,
        learning_rate=phase.learning_rate,
        label=saved.label,
    )
    loop = run_epochs(
        loop_settings,
        checkpoint,
        start,
        model,
        train_epoch,
        lambda: validation_scores(model, valid, target, device, settings.decision_threshold),
    )
    return loop.history, loop.best_epoch


def final_scores(
    model: Network,
    data: FitData,
    settings: FitSettings,
    device: torch.device,
    history: list[dict[str, float]],
    best_epoch: int,
) -> dict[str, Any]:
    """The validation scores of the kept weights (logged for SageMaker) and the run."""
    scores = validation_scores(model, data.valid, data.target, device, settings.decision_threshold)
    return {
        **final_summary(data.target.task, scores),
        "epochs_run": len(history),
        "best_epoch": best_epoch,
    }


def final_summary(task: str, scores: dict[str, float]) -> dict[str, Any]:
    """Log the final metric lines SageMaker reads; metrics.json's task, validation scores
    and (binary) decision threshold."""
    scores = dict(scores)
    threshold = scores.pop(THRESHOLD, None)
    for metric in metrics.for_task(task):
        log.info("%s", metric.final_line(scores[metric.name]))
    if threshold is not None:
        log.info("decision threshold %.4g (the positive class's probability)", threshold)
    return {"task": task, "validation": scores, "decision_threshold": threshold}

"""The one epoch loop that fine-tuning and pretraining share.

It owns what both need around an epoch: resuming from a checkpoint, timing, the per-epoch
log line, history, keeping the best weights (NaN-aware), saving a checkpoint, early
stopping, the non-finite loss check, and restoring the best weights at the end. A phase
supplies only "train one epoch" (per-batch losses) and "validate" (named scores).

The per-batch losses stay where they were computed (tensors on the device): the loop sums
them there and reads the sum once per epoch, so the host never waits for the device in the
middle of an epoch. With several processes, SIGTERM is checked (an all-reduce) every
STOP_CHECK_BATCHES batches; a single process checks its flag after every batch.

What both phases' epochs are made of is here too: `batches` (an epoch's shuffled row
indexes), `adamw` (the optimiser) and `optimizer_step` (one gradient step).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from tabtransformer import metrics
from tabtransformer.checkpoints import LoopState, PhaseCheckpoint
from tabtransformer.distributed import World
from tabtransformer.errors import UserError
from tabtransformer.settings import PhaseSettings

log = logging.getLogger(__name__)
STOP_CHECK_BATCHES = 16  # with several processes: batches between SIGTERM all-reduces
FUSED_ADAMW_DEVICES = ("cpu", "cuda")

# yields (mean batch loss: a detached 0-d tensor or a float, batch rows)
TrainEpoch = Callable[[], Iterable[tuple[torch.Tensor | float, int]]]
Validate = Callable[[], dict[str, float]]  # validation scores by name


@dataclass(frozen=True)
class LoopSettings:
    """How one phase's loop runs and reports.

    `watch` is the validation score early stopping follows; `loss_name` names the training
    loss in the log and history; `learning_rate_name` is the hyperparameter to lower when
    the loss stops being finite, and `learning_rate` the rate it resolved to (0: unknown)."""

    n_epochs: int
    patience: int
    watch: str
    higher_is_better: bool
    loss_name: str = "train_loss"
    learning_rate_name: str = "learning_rate"
    learning_rate: float = 0.0
    log_prefix: str = ""
    label: str = "fine-tune"  # what a progress bar calls the phase


@dataclass(frozen=True)
class EpochProgress:
    """What each epoch's log record carries (`record.progress`) for a progress bar."""

    phase: str  # the loop's label: "fine-tune", "fine-tune model 3/10", "pretrain rtd"
    epoch: int
    n_epochs: int
    loss: float
    watch: str  # the score early stopping follows, and its best so far
    best: float | None
    stopping: bool  # early stopping ends the phase after this epoch


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def score_fields(scores: dict[str, float]) -> str:
    """`validation_<name>=<value>` for each score, as the metric registry writes them."""
    return " ".join(
        metrics.BY_NAME[k].epoch_field(v) if k in metrics.BY_NAME else f"validation_{k}={v:.6g}"
        for k, v in scores.items()
    )


def run_epochs(
    settings: LoopSettings,
    checkpoint: PhaseCheckpoint,
    loop: LoopState,
    keep: nn.Module,
    train_epoch: TrainEpoch,
    validate: Validate,
) -> LoopState:
    """Run epochs until `n_epochs` or early stopping; leaves the best weights in `keep`.

    Continues from `loop` (what `checkpoint.restore()` gave; the caller restores before
    wrapping the model in DDP, so that the first process's weights are the ones shared),
    saves to `checkpoint` after the first epoch, then at most once a minute
    (checkpoints.SAVE_INTERVAL) and after the last, and stops (saving) after the batch in
    which SIGTERM arrives. Returns the final loop state (history, best epoch).
    """
    s = settings
    started, first_epoch = time.perf_counter(), loop.epoch + 1
    check_every = STOP_CHECK_BATCHES if checkpoint.owner.world.distributed else 1
    if loop.finished:
        log.info("%sfinished at epoch %d: nothing left to train", s.log_prefix, loop.epoch)
    for epoch in range(first_epoch, 0 if loop.finished else s.n_epochs + 1):
        epoch_start = time.perf_counter()
        total, seen = 0.0, 0  # total: the loss sum, on the device the losses are on
        for batch, (loss, rows) in enumerate(train_epoch(), start=1):
            total, seen = total + loss * rows, seen + rows
            if batch % check_every == 0:
                checkpoint.stop_if_requested(loop)
        train_loss = float(total) / seen  # the one wait for the device this epoch
        train_time = time.perf_counter() - epoch_start
        scores = validate()
        elapsed = time.perf_counter() - epoch_start
        if metrics.is_better(scores[s.watch], loop.best, s.higher_is_better):
            loop.best, loop.best_epoch = scores[s.watch], epoch
            loop.best_state = {k: v.detach().clone() for k, v in keep.state_dict().items()}
        stop = epoch - loop.best_epoch >= s.patience
        per_epoch = (time.perf_counter() - started) / (epoch - first_epoch + 1)
        log.info(
            "%sepoch %d/%d %s=%.6g %s rows/s=%.0f epoch_time=%s time_left<=%s best_%s=%.6g@%d",
            s.log_prefix,
            epoch,
            s.n_epochs,
            s.loss_name,
            train_loss,
            score_fields(scores),
            seen / train_time,
            format_duration(elapsed),
            format_duration(0 if stop else (s.n_epochs - epoch) * per_epoch),
            s.watch,
            loop.best,
            loop.best_epoch,
            extra={
                "progress": EpochProgress(
                    s.label, epoch, s.n_epochs, train_loss, s.watch, loop.best, stop
                )
            },
        )
        if not math.isfinite(train_loss):  # before saving: a restart must not resume from it
            raise UserError(
                f"The {s.loss_name.replace('_', ' ')} became {train_loss} in "
                f"{s.log_prefix}epoch {epoch}: training diverged. Try a lower "
                f"{s.learning_rate_name}"
                + (f" (this run used {s.learning_rate:g})." if s.learning_rate else ".")
            )
        loop.epoch, loop.finished = epoch, stop
        loop.history.append(
            {
                "epoch": epoch,
                s.loss_name: train_loss,
                **{f"validation_{k}": v for k, v in scores.items()},
                "train_seconds": train_time,
                "validation_seconds": elapsed - train_time,
            }
        )
        if stop or epoch == s.n_epochs or checkpoint.due():
            checkpoint.save(loop)
        if stop:
            log.info(
                "%searly stopping: validation_%s has not improved for %d epochs",
                s.log_prefix,
                s.watch,
                s.patience,
            )
            break
    if loop.best_state is not None:
        keep.load_state_dict(loop.best_state)
        log.info(
            "%skept the weights of epoch %d (best %s %.6g)",  # not the metric regexes' form
            s.log_prefix,
            loop.best_epoch,
            s.watch,
            loop.best,
        )
    return loop


def batches(
    n_rows: int,
    batch_size: int,
    generator: torch.Generator,
    world: World | None = None,
    device: torch.device | None = None,
    rows_per_rank: int | None = None,
) -> list[torch.Tensor]:
    """Shuffled row indexes, one tensor per batch (moved to `device` once per epoch, not
    batch by batch); with several processes, this one's shard of the shared permutation
    (every process gets as many batches; `rows_per_rank`: see `World.shard`)."""
    order = torch.randperm(n_rows, generator=generator)
    if world is not None:
        order = world.shard(order, rows_per_rank)
    if device is not None:
        order = order.to(device)
    return list(order.split(batch_size))


def adamw(
    params: Iterable[torch.nn.Parameter] | Iterable[dict],
    phase: PhaseSettings,
    device: torch.device,
) -> torch.optim.AdamW:
    """AdamW with the phase's learning rate and weight decay; fused (one kernel for all
    parameters, a quarter of the time of the per-parameter loop) on CPUs and GPUs."""
    return torch.optim.AdamW(
        params,
        lr=phase.learning_rate,
        weight_decay=phase.weight_decay,
        fused=device.type in FUSED_ADAMW_DEVICES or None,
    )


def optimizer_step(
    optimizer: torch.optim.Optimizer, loss: torch.Tensor, grad_clip: float = 0.0
) -> torch.Tensor:
    """One gradient step on `loss` (its global gradient norm clipped to `grad_clip` when
    > 0); returns it detached, where it was computed: reading it (`.item()`) would make
    the host wait for the device every batch, so the loop sums it there instead."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return loss.detach()

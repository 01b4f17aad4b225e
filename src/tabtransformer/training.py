"""Supervised training loop: AdamW, early stopping on a validation metric, best weights kept.

The whole table is encoded once into tensors; batches are index slices of those tensors,
so the loop has no per-row Python. Uses CUDA with bf16 autocast when available.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tabtransformer import metrics
from tabtransformer.checkpoints import Checkpointer
from tabtransformer.distributed import World, wrap
from tabtransformer.model import TabTransformer
from tabtransformer.preprocessing import TargetEncoder
from tabtransformer.schedule import learning_rate_factor, set_learning_rate

log = logging.getLogger(__name__)
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


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPUs that support it, nothing elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def batches(
    n_rows: int, batch_size: int, generator: torch.Generator, world: World | None = None
) -> Iterator[torch.Tensor]:
    """Shuffled row indexes, one tensor per batch; with several processes, this one's
    shard of the shared permutation (every process gets as many batches)."""
    order = torch.randperm(n_rows, generator=generator)
    if world is not None:
        order = world.shard(order)
    yield from order.split(batch_size)


def optimizer_step(
    optimizer: torch.optim.Optimizer, loss: torch.Tensor, grad_clip: float = 0.0
) -> float:
    """One gradient step on `loss` (its global gradient norm clipped to `grad_clip` when
    > 0); returns its value."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return loss.item()


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


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


@torch.inference_mode()
def predict_raw(model: TabTransformer, data: Encoded, device: torch.device) -> torch.Tensor:
    """Model outputs (N, n_outputs) as float32 on the CPU, in evaluation mode."""
    was_training = model.training
    model.eval()
    outs = []
    for start in range(0, len(data), EVAL_BATCH_ROWS):
        part = data.rows(slice(start, start + EVAL_BATCH_ROWS)).to(device)
        with autocast(device):
            outs.append(model(part.codes, part.numbers).float().cpu())
    model.train(was_training)
    return torch.cat(outs) if outs else torch.zeros(0, model.config.n_outputs)


def to_prediction(raw: torch.Tensor, target: TargetEncoder) -> np.ndarray:
    """Probabilities (N, C), or regression predictions in target units (N,): the mean over
    ensemble members (raw (N, k, n_outputs)) of their probabilities or values."""
    members = (raw if raw.ndim == 3 else raw.unsqueeze(1)).double()  # (N, k, n_outputs)
    if target.task == "regression":
        return target.decode_regression(members[:, :, 0].mean(dim=1).numpy())
    return torch.softmax(members, dim=2).mean(dim=1).numpy()


def evaluate(
    model: TabTransformer, data: Encoded, target: TargetEncoder, device: torch.device
) -> dict[str, float]:
    """Loss and every registered metric of the task on a labelled table."""
    raw = predict_raw(model, data, device)
    result = {"loss": float(loss_fn(target.task)(raw, data.target))}
    y = data.target.numpy()
    if target.task == "regression":
        y = target.decode_regression(y.astype(np.float64))
    result.update(metrics.compute_all(target.task, y, to_prediction(raw, target)))
    return result


def fit(
    model: TabTransformer,
    train: Encoded,
    valid: Encoded,
    target: TargetEncoder,
    hp: dict[str, Any],
    device: torch.device,
    checkpointer: Checkpointer | None = None,
    world: World | None = None,
) -> tuple[list[dict[str, float]], int]:
    """Train with early stopping on `hp['eval_metric']`; leaves the best weights in `model`.

    Resumes from and saves to `checkpointer` each epoch (phase "finetune"). Returns the
    per-epoch history (train loss and validation metrics) and the best epoch.
    """
    checkpointer = checkpointer or Checkpointer(None)
    world = world or World()
    eval_name = hp["eval_metric"]
    if eval_name == "auto":
        eval_name = metrics.DEFAULT_EVAL_METRIC[target.task]
    eval_metric = metrics.BY_NAME[eval_name]
    generator = torch.Generator().manual_seed(hp["seed"])
    model.to(device).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=hp["learning_rate"], weight_decay=hp["weight_decay"]
    )
    checkpoint = checkpointer.phase("finetune", model, optimizer, [generator])
    loop = checkpoint.restore()
    trained = wrap(model, world)  # DDP when there are several processes
    criterion = loss_fn(target.task)
    train_on_device = train.to(device)
    started, first_epoch = time.perf_counter(), loop.epoch + 1
    n_epochs = hp["n_epochs"]
    for epoch in range(first_epoch, n_epochs + 1):
        epoch_start = time.perf_counter()
        total, seen = 0.0, 0
        epoch_batches = list(batches(len(train), hp["batch_size"], generator, world))
        for step, index in enumerate(epoch_batches):
            progress = epoch - 1 + (step + 1) / len(epoch_batches)
            factor = learning_rate_factor(
                progress, n_epochs, hp["warmup_epochs"], hp["lr_schedule"]
            )
            set_learning_rate(optimizer, hp["learning_rate"] * factor)
            batch = train_on_device.rows(index.to(device))
            with autocast(device):
                out = trained(batch.codes, batch.numbers)
            loss = criterion(out, batch.target)
            total += optimizer_step(optimizer, loss, hp["grad_clip"]) * len(index)
            seen += len(index)
            checkpoint.stop_if_requested(loop)
        train_loss = total / seen
        scores = evaluate(model, valid, target, device)
        elapsed = time.perf_counter() - epoch_start
        if eval_metric.is_better(scores[eval_name], loop.best):
            loop.best, loop.best_epoch = scores[eval_name], epoch
            loop.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        loop.epoch = epoch
        loop.history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                **{f"validation_{k}": v for k, v in scores.items()},
            }
        )
        checkpoint.save(loop)
        stop = epoch - loop.best_epoch >= hp["patience"]
        per_epoch = (time.perf_counter() - started) / (epoch - first_epoch + 1)
        remaining = 0 if stop else (n_epochs - epoch) * per_epoch
        fields = " ".join(
            metrics.BY_NAME[k].epoch_field(v) if k in metrics.BY_NAME else f"validation_{k}={v:.6g}"
            for k, v in scores.items()
        )
        log.info(
            "epoch %d/%d train_loss=%.6g %s rows/s=%.0f epoch_time=%s time_left<=%s "
            "best_%s=%.6g@%d",
            epoch,
            n_epochs,
            train_loss,
            fields,
            seen / elapsed,
            format_duration(elapsed),
            format_duration(remaining),
            eval_name,
            loop.best,
            loop.best_epoch,
        )
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"train loss became {train_loss} in epoch {epoch}; try a lower learning_rate"
            )
        if stop:
            log.info(
                "early stopping: validation_%s has not improved for %d epochs",
                eval_name,
                hp["patience"],
            )
            break
    if loop.best_state is not None:
        model.load_state_dict(loop.best_state)
    log.info(
        "restored the weights of epoch %d (best %s %.6g)", loop.best_epoch, eval_name, loop.best
    )
    return loop.history, loop.best_epoch

"""Supervised fine-tuning: AdamW on the task's loss, early stopping on a validation metric.

The whole table is encoded once into tensors; batches are index slices of those tensors,
so the loop has no per-row Python. Uses CUDA with bf16 autocast when available. The epoch
loop itself (resume, best weights, log line, patience) is `loop.run_epochs`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tabtransformer import metrics
from tabtransformer.checkpoints import Checkpointer
from tabtransformer.distributed import World, wrap
from tabtransformer.errors import UserError
from tabtransformer.inference import Encoded, autocast, predict_raw, to_prediction
from tabtransformer.loop import LoopSettings, run_epochs
from tabtransformer.model import TabTransformer
from tabtransformer.preprocessing import TargetEncoder
from tabtransformer.settings import PhaseSettings


@dataclass(frozen=True)
class FitSettings:
    """What fine-tuning reads: the loop and optimiser settings and the resolved metric."""

    eval_metric: str  # never "auto"
    phase: PhaseSettings

    @classmethod
    def from_hyperparameters(cls, hp: Mapping[str, Any], task: str) -> FitSettings:
        """Resolve eval_metric=auto for `task`, or check that the metric applies to it."""
        name = hp["eval_metric"]
        if name == "auto":
            name = metrics.DEFAULT_EVAL_METRIC[task]
        elif task not in metrics.BY_NAME[name].tasks:
            raise UserError(
                f"eval_metric={name} does not apply to task {task}; use one of "
                f"{[m.name for m in metrics.for_task(task)]} or auto."
            )
        return cls(name, PhaseSettings.fine_tuning(hp))


def batches(
    n_rows: int, batch_size: int, generator: torch.Generator, world: World | None = None
) -> Iterator[torch.Tensor]:
    """Shuffled row indexes, one tensor per batch; with several processes, this one's
    shard of the shared permutation (every process gets as many batches)."""
    order = torch.randperm(n_rows, generator=generator)
    if world is not None:
        order = world.shard(order)
    yield from order.split(batch_size)


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """One gradient step on `loss`; returns its value."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def loss_fn(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if task == "regression":
        return lambda out, y: F.mse_loss(out[:, 0].float(), y)
    return lambda out, y: F.cross_entropy(out.float(), y)


def validation_scores(
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
    settings: FitSettings,
    device: torch.device,
    checkpointer: Checkpointer | None = None,
    world: World | None = None,
) -> tuple[list[dict[str, float]], int]:
    """Train with early stopping on `settings.eval_metric`; leaves the best weights in `model`.

    Resumes from and saves to `checkpointer` each epoch (phase "finetune"). Returns the
    per-epoch history (train loss and validation metrics) and the best epoch.
    """
    checkpointer = checkpointer or Checkpointer(None)
    world = world or World()
    phase = settings.phase
    generator = torch.Generator().manual_seed(phase.seed)
    model.to(device).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=phase.learning_rate, weight_decay=phase.weight_decay
    )
    checkpoint = checkpointer.phase("finetune", model, optimizer, [generator])
    start = checkpoint.restore()  # before DDP shares the first process's weights
    ddp_model = wrap(model, world)  # DistributedDataParallel when there are several processes
    criterion = loss_fn(target.task)
    train_on_device = train.to(device)

    def train_epoch() -> Iterator[tuple[float, int]]:
        for index in batches(len(train), phase.batch_size, generator, world):
            batch = train_on_device.rows(index.to(device))
            with autocast(device):
                out = ddp_model(batch.codes, batch.numbers)
            yield optimizer_step(optimizer, criterion(out, batch.target)), len(index)

    loop_settings = LoopSettings(
        n_epochs=phase.n_epochs,
        patience=phase.patience,
        watch=settings.eval_metric,
        higher_is_better=metrics.BY_NAME[settings.eval_metric].higher_is_better,
    )
    loop = run_epochs(
        loop_settings,
        checkpoint,
        start,
        model,
        train_epoch,
        lambda: validation_scores(model, valid, target, device),
    )
    return loop.history, loop.best_epoch

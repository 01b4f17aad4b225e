"""The fine-tuning learning-rate schedule: linear warm-up, then constant or cosine decay.

Stateless: the rate is a function of training progress in epochs, so a job resumed from a
checkpoint continues the same curve without saving a scheduler.
"""

from __future__ import annotations

import math

import torch


def learning_rate_factor(
    progress: float, n_epochs: int, warmup_epochs: float, schedule: str
) -> float:
    """Multiplier of the base learning rate after `progress` epochs (fractional) of
    `n_epochs`: linear from 0 over `warmup_epochs`, then 1 ('constant') or a cosine
    decay reaching 0 at `n_epochs` ('cosine')."""
    if warmup_epochs > 0 and progress < warmup_epochs:
        return progress / warmup_epochs
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown lr_schedule {schedule!r}")
    span = max(n_epochs - warmup_epochs, 1e-9)
    done = min(max((progress - warmup_epochs) / span, 0.0), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * done))


def set_learning_rate(optimizer: torch.optim.Optimizer, rate: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = rate

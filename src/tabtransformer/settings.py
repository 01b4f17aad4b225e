"""Typed views of the validated hyperparameters: frozen dataclasses built once per job.

Each consumer declares the settings it reads (`FitSettings` in training, `PretrainSettings`
in pretraining, `TableSettings` in tables), so that no signature takes the raw dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

T = TypeVar("T")


def pick(cls: type[T], hp: Mapping[str, Any]) -> T:
    """A settings dataclass whose every field is the hyperparameter of the same name."""
    return cls(**{f.name: hp[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class PhaseSettings:
    """What a training phase's optimiser and epoch loop read."""

    n_epochs: int
    patience: int
    batch_size: int
    learning_rate: float
    weight_decay: float = 1e-4
    seed: int = 0
    compile: bool = False  # torch.compile the network (eager when compiling fails)

    @classmethod
    def fine_tuning(cls, hp: Mapping[str, Any]) -> PhaseSettings:
        return pick(cls, hp)

    @classmethod
    def pretraining(cls, hp: Mapping[str, Any]) -> PhaseSettings:
        """The pretrain_* values; weight decay, seed and compile are shared with fine-tuning."""
        return cls(
            hp["pretrain_epochs"],
            hp["pretrain_patience"],
            hp["pretrain_batch_size"],
            hp["pretrain_learning_rate"],
            hp["weight_decay"],
            hp["seed"],
            hp["compile"],
        )

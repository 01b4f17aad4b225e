"""Checkpoints for spot interruptions and SIGTERM, in `/opt/ml/checkpoints`.

SageMaker syncs that folder with S3 and restores it when a job restarts. After every epoch
the loop state (weights, optimizer, best weights so far, history, random generator, whether
the phase has finished) is written to a temporary file and renamed over `checkpoint.pt`;
the one it replaces is kept as `checkpoint.previous.pt`. A checkpoint that cannot be read
(a partial sync: empty, truncated, not a checkpoint) is set aside as
`checkpoint.pt.damaged-<time>` with a warning, and the job resumes from the previous one or
starts afresh. The files hold only tensors and plain values and are read with
`torch.load(weights_only=True)`: nothing is unpickled. SIGTERM (SageMaker allows 120 s
before SIGKILL) sets a flag; the loop saves at the end of the current batch and stops.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tabtransformer.distributed import World

log = logging.getLogger(__name__)
FILE = "checkpoint.pt"
PREVIOUS = "checkpoint.previous.pt"
KEYS = ("fingerprint", "phase", "loop", "model", "optimizer", "generators")
# Hyperparameters that may change between a stopped job and its restart.
RESUMABLE_CHANGES = ("n_epochs", "patience", "pretrain_epochs", "pretrain_patience", "compile")


class Stopped(Exception):
    """Training stopped on SIGTERM after saving a checkpoint."""


class StopFlag:
    """Becomes true on SIGTERM (installed once per training job)."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> StopFlag:
        signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("SIGTERM received: saving a checkpoint after the current batch")
        self.requested = True


@dataclass
class LoopState:
    """Where an epoch loop stands: completed epochs, best score, best weights, history."""

    epoch: int = 0
    best: float | None = None
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    finished: bool = False  # stopped early: a restart trains no further


class Checkpointer:
    """Saves and restores the loop state of one job; ignores checkpoints of other jobs.

    `directory=None` disables checkpoints (in-process use, tests of the loops).
    """

    def __init__(
        self,
        directory: Path | None,
        job_fingerprint: str = "",
        stop: StopFlag | None = None,
        world: World | None = None,
    ):
        self.path = directory / FILE if directory is not None else None
        self.fingerprint = job_fingerprint
        self.stop = stop or StopFlag()
        self.world = world or World()
        self._loaded, self._start = False, None

    def _read(self) -> dict[str, Any] | None:
        """The checkpoint this job started from, read once (later saves do not change
        what the job resumes from)."""
        if not self._loaded:
            self._loaded = True
            candidates = [self.path, self.path.with_name(PREVIOUS)] if self.path else []
            state = next(filter(None, map(self._readable, candidates)), None)
            if state is not None and state["fingerprint"] == self.fingerprint:
                self._start = state
            elif state is not None:
                log.warning(
                    "ignoring the checkpoint in %s: it belongs to a job with other data or "
                    "settings",
                    self.path.parent,
                )
        return self._start

    def _readable(self, path: Path) -> dict[str, Any] | None:
        """The checkpoint in `path`; None when absent or unreadable (then set aside, by the
        first process, so that a later restart does not trip over it again)."""
        if not path.is_file():
            return None
        try:
            with warnings.catch_warnings():  # torch's advice about odd bytes is not ours
                warnings.simplefilter("ignore")
                state = torch.load(path, weights_only=True)
            problem = "it is not a checkpoint of this algorithm"
        except Exception as error:  # empty, truncated, random bytes: torch raises many kinds
            state, problem = None, f"{type(error).__name__}: {str(error)[:200]}"
        if isinstance(state, dict) and all(key in state for key in KEYS):
            return state
        if self.world.is_main:
            aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, aside)
            log.warning("set aside the unreadable checkpoint %s as %s (%s)", path, aside, problem)
        return None

    def resumed_phase(self) -> str | None:
        """The phase the job's checkpoint was saved in ("pretrain" or "finetune"), None
        without one: a job resuming in "finetune" has finished pretraining."""
        state = self._read()
        return state["phase"] if state else None

    def phase(
        self,
        name: str,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        generators: list[torch.Generator],
    ) -> PhaseCheckpoint:
        """Checkpointing for one loop: what it trains and what it draws random numbers from."""
        return PhaseCheckpoint(self, name, model, optimizer, generators)


@dataclass
class PhaseCheckpoint:
    """Restores, saves and stops one training loop ("pretrain" or "finetune")."""

    owner: Checkpointer
    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generators: list[torch.Generator]

    def restore(self) -> LoopState:
        """Load this phase's saved state into model, optimizer and generators, or start."""
        state = self.owner._read()
        if state is None or state["phase"] != self.name:
            return LoopState()
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for generator, saved in zip(self.generators, state["generators"], strict=True):
            generator.set_state(saved)
        loop = LoopState(**state["loop"])
        log.info("resuming %s from %s after epoch %d", self.name, self.owner.path, loop.epoch)
        return loop

    def save(self, loop: LoopState) -> None:
        """Write the state atomically (temporary file, then rename); the main process only."""
        path = self.owner.path
        if path is None or not self.owner.world.is_main:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        torch.save(
            {
                "fingerprint": self.owner.fingerprint,
                "phase": self.name,
                "loop": asdict(loop),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "generators": [g.get_state() for g in self.generators],
            },
            partial,
        )
        if path.is_file():  # kept, so that a damaged newest file has one to fall back to
            os.replace(path, path.with_name(PREVIOUS))
        os.replace(partial, path)

    def stop_if_requested(self, loop: LoopState) -> None:
        """After SIGTERM on any process: save (the current epoch reruns on resume), stop."""
        if self.owner.world.any(self.owner.stop.requested):
            self.save(loop)
            raise Stopped(
                f"stopped by SIGTERM during {self.name} epoch {loop.epoch + 1}; "
                f"checkpoint saved to {self.owner.path}"
            )


def fingerprint(hp: dict[str, Any], schema: dict[str, Any], n_rows: int) -> str:
    """Identifies a job by its data shape and the settings a resume must not change."""
    fixed = {k: v for k, v in hp.items() if k not in RESUMABLE_CHANGES}
    text = json.dumps({"hp": fixed, "schema": schema, "rows": n_rows}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]

"""Checkpoints for spot interruptions and SIGTERM, in `/opt/ml/checkpoints`.

SageMaker syncs that folder with S3 and restores it when a job restarts. After every epoch
the loop state (weights, optimizer, best weights so far, history, random generator, whether
the phase has finished) is written to a temporary file and renamed over `checkpoint.pt`;
the one it replaces is kept as `checkpoint.previous.pt`. A checkpoint that cannot be read
(a partial sync: empty, truncated, not a checkpoint, a folder) or that does not fit the
network (other tensor shapes, entries of the wrong type) is set aside as
`checkpoint.pt.damaged-<time>` with a warning, and the job resumes from the previous one or
starts afresh. A checkpoint's identity (`fingerprint`) holds the job's data shape and
settings, the checkpoint format and a digest of the network code, so a checkpoint written
by another version of the image is ignored rather than loaded. The files hold only tensors
and plain values and are read with `torch.load(weights_only=True)`: nothing is unpickled.
SIGTERM (SageMaker allows 120 s before SIGKILL) sets a flag; the loop saves at the end of
the current batch and stops.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import re
import signal
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tabtransformer import model as network_code
from tabtransformer.distributed import World

log = logging.getLogger(__name__)
FILE = "checkpoint.pt"
PREVIOUS = "checkpoint.previous.pt"
# Between epochs a checkpoint is written at most this often (and always after the first and
# the last epoch, and on SIGTERM, which a spot interruption sends two minutes ahead): tiny
# epochs of a few hundred rows would otherwise spend most of their time writing files.
SAVE_INTERVAL = 60.0
KEYS = ("fingerprint", "phase", "loop", "model", "optimizer", "generators")
PHASES = ("pretrain", "finetune")  # and "finetune fold i/k" (crossfit.py)
FOLD_PHASE = re.compile(r"finetune fold [1-9][0-9]*/[1-9][0-9]*")
# Part of every checkpoint's identity: bump when what a checkpoint holds changes.
FORMAT_VERSION = 2
# Hyperparameters that may change between a stopped job and its restart.
RESUMABLE_CHANGES = ("n_epochs", "patience", "pretrain_epochs", "pretrain_patience", "compile")


class IncompatibleCheckpoint(Exception):
    """A readable checkpoint that does not fit the network or the loop it is restored into."""


class Stopped(Exception):
    """Training stopped on SIGTERM after saving a checkpoint."""


class StopFlag:
    """Becomes true on SIGTERM while installed (`with StopFlag() as stop:`, around a
    training job): the process's own SIGTERM handler comes back after it, so a notebook
    kernel that trained in process still stops on SIGTERM. Off the main thread (where a
    handler cannot be installed) it only stops when `requested` is set."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

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

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> LoopState:
        """The loop state a checkpoint holds; an entry of the wrong kind is a TypeError."""
        loop = cls(**saved)
        kinds = {
            "epoch": int,
            "best": (float, int, type(None)),
            "best_epoch": int,
            "best_state": (dict, type(None)),
            "history": list,
            "finished": bool,
        }
        for name, kind in kinds.items():
            value = getattr(loop, name)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise TypeError(f"loop entry {name!r} is a {type(value).__name__}")
        if loop.epoch < 0 or not all(isinstance(h, dict) for h in loop.history):
            raise TypeError("loop entries 'epoch' or 'history' are out of range")
        return loop


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
        self._candidates: list[tuple[Path, dict[str, Any]]] = []

    def _read(self) -> dict[str, Any] | None:
        """The checkpoint this job starts from, chosen once (later saves do not change
        what the job resumes from): the newest well-formed one of this job."""
        if not self._loaded:
            self._loaded = True
            self._candidates = []
            for path in [self.path, self.path.with_name(PREVIOUS)] if self.path else []:
                state = self._readable(path)
                if state is not None and state["fingerprint"] == self.fingerprint:
                    self._candidates.append((path, state))
                elif state is not None:
                    log.warning(
                        "ignoring the checkpoint %s: it belongs to a job with other data or "
                        "settings, or to another version of this image",
                        path,
                    )
            self._start = self._candidates[0][1] if self._candidates else None
        return self._start

    def _readable(self, path: Path) -> dict[str, Any] | None:
        """The checkpoint in `path`; None when absent or unreadable (then set aside, by the
        first process, so that a later restart does not trip over it again)."""
        if not path.exists() and not path.is_symlink():
            return None
        try:
            with warnings.catch_warnings():  # torch's advice about odd bytes is not ours
                warnings.simplefilter("ignore")
                state = torch.load(path, weights_only=True)
            problem = well_formed_problem(state)
        except Exception as error:  # empty, truncated, a folder: torch raises many kinds
            state, problem = None, f"{type(error).__name__}: {str(error)[:200]}"
        if problem is None:
            return state
        self.set_aside(path, problem, "unreadable")
        return None

    def set_aside(self, path: Path, problem: str, what: str = "incompatible") -> None:
        """Rename an unusable checkpoint out of the way (the first process), with a warning."""
        if not self.world.is_main:
            return
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, aside)
        log.warning("set aside the %s checkpoint %s as %s (%s)", what, path, aside, problem)

    def discard_start(self, problem: str) -> None:
        """The start checkpoint does not fit: set it aside and fall back to the next one of
        this job (or none: start afresh)."""
        path, _ = self._candidates.pop(0)
        self.set_aside(path, problem)
        self._start = self._candidates[0][1] if self._candidates else None

    def resumed_phase(self, network: torch.nn.Module | None = None) -> str | None:
        """The phase the job's checkpoint was saved in ("pretrain", "finetune" or
        "finetune fold i/k"), None without one: a job resuming in a "finetune" phase has
        finished pretraining. With `network`
        (the model fine-tuning trains), a "finetune" checkpoint whose weights do not fit it
        is set aside first, so that pretraining is not skipped for a checkpoint that then
        cannot be restored."""
        state = self._read()
        while state is not None and network is not None and state["phase"].startswith("finetune"):
            problem = weights_problem(state["model"], network)
            if problem is None:
                break
            self.discard_start(problem)
            state = self._start
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
    """Restores, saves and stops one training loop ("pretrain", "finetune" or a fold's)."""

    owner: Checkpointer
    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generators: list[torch.Generator]
    saved_at: float | None = None  # time.monotonic() of this phase's last save

    def due(self) -> bool:
        """Whether an epoch's save is due: none yet, or SAVE_INTERVAL since the last."""
        return self.saved_at is None or time.monotonic() - self.saved_at >= SAVE_INTERVAL

    def restore(self) -> LoopState:
        """Load this phase's saved state into model, optimizer and generators, or start.
        A state that does not fit is set aside and the next one (or a fresh start) taken;
        model, optimizer and generators are then as they were."""
        while (state := self.owner._read()) is not None and state["phase"] == self.name:
            try:
                return self._load(state)
            except IncompatibleCheckpoint as error:
                self.owner.discard_start(str(error))
        return LoopState()

    def _load(self, state: dict[str, Any]) -> LoopState:
        problem = weights_problem(state["model"], self.model)
        if problem is not None:
            raise IncompatibleCheckpoint(problem)
        before = (
            copy.deepcopy(self.model.state_dict()),
            copy.deepcopy(self.optimizer.state_dict()),
            [g.get_state() for g in self.generators],
        )
        try:
            if len(state["generators"]) != len(self.generators):
                raise ValueError(f"{len(state['generators'])} random generators saved")
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            check_optimizer_fits(self.optimizer)
            for generator, saved in zip(self.generators, state["generators"], strict=True):
                generator.set_state(saved)
            loop = LoopState.from_saved(state["loop"])
        except (RuntimeError, ValueError, TypeError, KeyError) as error:
            self.model.load_state_dict(before[0])
            self.optimizer.load_state_dict(before[1])
            for generator, saved in zip(self.generators, before[2], strict=True):
                generator.set_state(saved)
            raise IncompatibleCheckpoint(f"{type(error).__name__}: {str(error)[:200]}") from None
        log.info("resuming %s from %s after epoch %d", self.name, self.owner.path, loop.epoch)
        return loop

    def save(self, loop: LoopState) -> None:
        """Write the state atomically (temporary file, then rename); the main process only."""
        path = self.owner.path
        self.saved_at = time.monotonic()
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
        elif path.exists():  # a folder in the way: set it aside, not fail the job
            self.owner.set_aside(path, "not a file", "unreadable")
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
    """Identifies a job by its data shape, the settings a resume must not change, the
    checkpoint format and the network code."""
    fixed = {k: v for k, v in hp.items() if k not in RESUMABLE_CHANGES}
    identity = {
        "hp": fixed,
        "schema": schema,
        "rows": n_rows,
        "format": FORMAT_VERSION,
        "network": NETWORK_CODE_DIGEST,
    }
    text = json.dumps(identity, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


NETWORK_CODE_DIGEST = hashlib.sha256(Path(network_code.__file__).read_bytes()).hexdigest()[:16]


def well_formed_problem(state: Any) -> str | None:
    """What makes a loaded object not a checkpoint of this algorithm, or None."""
    if not isinstance(state, dict) or not all(key in state for key in KEYS):
        return "it is not a checkpoint of this algorithm"
    phase = state["phase"]
    known = phase in PHASES or (isinstance(phase, str) and FOLD_PHASE.fullmatch(phase))
    if not known or not isinstance(state["fingerprint"], str):
        return f"its phase {phase!r:.40} is not one of {PHASES} or 'finetune fold i/k'"
    if not isinstance(state["loop"], dict) or not isinstance(state["optimizer"], dict):
        return "its loop or optimizer entry is not a mapping"
    model, generators = state["model"], state["generators"]
    if not isinstance(model, dict) or not all(isinstance(t, torch.Tensor) for t in model.values()):
        return "its model entry is not a mapping of tensors"
    if not isinstance(generators, list) or not all(
        isinstance(g, torch.Tensor) and g.dtype == torch.uint8 for g in generators
    ):
        return "its generators entry is not a list of generator states"
    return None


def weights_problem(saved: dict[str, torch.Tensor], module: torch.nn.Module) -> str | None:
    """How saved weights differ from `module`'s (names, shapes), or None if they fit."""
    expected = module.state_dict()
    if set(saved) != set(expected):
        differ = sorted(set(saved) ^ set(expected))
        return f"its weights name other tensors ({differ[:3]})"
    for name, tensor in expected.items():
        if saved[name].shape != tensor.shape:
            shapes = f"{tuple(saved[name].shape)}, the network's {tuple(tensor.shape)}"
            return f"tensor {name!r} is {shapes}"
    return None


def check_optimizer_fits(optimizer: torch.optim.Optimizer) -> None:
    """Every per-parameter optimizer tensor has its parameter's shape (else ValueError)."""
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            for key, value in optimizer.state.get(parameter, {}).items():
                if (
                    isinstance(value, torch.Tensor)
                    and value.ndim
                    and value.shape != parameter.shape
                ):
                    raise ValueError(f"optimizer state {key!r} has shape {tuple(value.shape)}")

"""Cross-fitted fine-tuning (`cv_folds` = k >= 2): every labelled row trains, and each
model early-stops on a fold of its own instead of one small hold-out.

The labelled training rows (with no `validation` channel: the hold-out rows too) are split
into k folds, stratified by class, seeded. Model i starts as
the single model would (a fresh network, or the base or pretrained encoder with a new
head; seeded per fold), trains on the other k - 1 folds and early-stops on fold i, through
`training.fit` (the one epoch loop). The job's validation scores are those of the
out-of-fold predictions of every row; with a `validation` channel, those of the k models'
mean on it. The k models become one `CrossFitted` network: one artifact, whose prediction
is the mean of the folds'.

With a pretrained encoder and `fold_starts` pretrained_and_fresh, k fresh models train on
the same folds after the k pretrained ones (model k + i holds out fold i, as model i
does): 2k models, and each row's out-of-fold prediction is the mean of its two.

Checkpoints: the model in training is checkpointed every epoch like a single model (phase
"finetune fold m/n", the m-th of n models), and each finished model's weights and history
are written once beside it (FOLDS_FILE), so a restart resumes the model it was in.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import KFold, StratifiedKFold

from tabtransformer.checkpoints import Checkpointer
from tabtransformer.host_store import MappedRows
from tabtransformer.inference import predict_raw
from tabtransformer.model import CrossFitted, TabTransformer
from tabtransformer.training import (
    FitData,
    FitSettings,
    Saved,
    final_summary,
    fit,
    scores_of,
    validation_scores,
)

log = logging.getLogger(__name__)
FOLDS_FILE = "finished_folds.pt"
PHASE_PREFIX = "finetune fold "


def fold_rows(train: MappedRows, valid: MappedRows, own_valid: bool) -> MappedRows:
    """The rows the folds split: the training rows, and the rows the job held out of them
    when there is no `validation` channel (the same arrays, so one view of both)."""
    if own_valid:
        return train
    if not same_array(train.codes_array, valid.codes_array) or train.index is None:
        raise ValueError("the hold-out is not a view of the training rows")
    return replace(train, index=np.sort(np.concatenate([train.index, valid.index])))


def same_array(a: np.ndarray, b: np.ndarray) -> bool:
    """One array, or two maps of one file."""
    name = getattr(a, "filename", None)
    return a is b or (name is not None and name == getattr(b, "filename", None))


def assign_folds(labels: np.ndarray, k: int, seed: int, classify: bool) -> np.ndarray:
    """Each row's fold (0..k-1): stratified by class when every class has two rows (a class
    of fewer than k rows is spread one row a fold)."""
    n = len(labels)
    counts = np.unique(labels, return_counts=True)[1] if classify else np.array([0])
    if classify and counts.min() >= 2:
        splitter: KFold | StratifiedKFold = StratifiedKFold(k, shuffle=True, random_state=seed)
    else:
        splitter = KFold(k, shuffle=True, random_state=seed)
    folds = np.empty(n, dtype=np.int64)
    with warnings.catch_warnings():  # "the least populated class has fewer than k members"
        warnings.simplefilter("ignore", UserWarning)
        for i, (_, held_out) in enumerate(splitter.split(np.zeros(n), labels)):
            folds[held_out] = i
    return folds


@dataclass
class CrossFit:
    """The cross-fitted run: the k networks as one, each fold's history and best epoch,
    the validation scores (out-of-fold, or on the validation channel) and what they are
    computed on."""

    network: CrossFitted
    histories: list[list[dict[str, float]]]
    best_epochs: list[int]
    scores: dict[str, float]
    scored_on: str
    pool: MappedRows  # the rows the folds split
    assignment: np.ndarray  # each pool row's fold

    def held_out(self, fold: int) -> MappedRows:
        """The rows fold `fold` (0-based) held out."""
        return self.pool.subset(np.flatnonzero(self.assignment == fold))

    def summary(self, task: str) -> dict[str, Any]:
        """metrics.json's entries for the run (the validation scores, how they were made)."""
        k = int(self.assignment.max()) + 1
        return {
            **final_summary(task, self.scores),
            "validation_rows": self.scored_on,
            "folds": k,
            "models": len(self.histories),
            "epochs_run": [len(h) for h in self.histories],
            "best_epoch": self.best_epochs,
        }


def fit_folds(
    start: Callable[[int], TabTransformer],
    data: FitData,
    settings: FitSettings,
    device: torch.device,
    checkpointer: Checkpointer,
    own_valid: bool,
) -> CrossFit:
    """Train k = settings' folds models (`start(m)`: model m's network before fine-tuning;
    with `settings.fresh_folds`, 2k models, model m holding out fold m mod k) on
    `data.train` split into folds; `own_valid`: `data.valid` is a validation channel (else
    the job's hold-out, which joins the folds)."""
    k, seed = settings.folds, settings.phase.seed
    n_models = 2 * k if settings.fresh_folds else k
    pool = fold_rows(data.train, data.valid, own_valid)
    labels = pool.target.numpy()
    folds = assign_folds(labels, k, seed, data.target.task != "regression")
    network = CrossFitted.of([start(m) for m in range(n_models)])
    done = finished_folds(checkpointer, network, resumed_fold(checkpointer, n_models))
    first = len(done)
    histories, best_epochs = [d["history"] for d in done], [d["best_epoch"] for d in done]
    log.info(
        "cross-fitting %d models on %d labelled rows (folds of %s rows%s)%s",
        n_models,
        len(pool),
        "/".join(str(int(n)) for n in np.bincount(folds, minlength=k)),
        f"; models 1-{k} from the pretrained encoder, {k + 1}-{n_models} fresh"
        if settings.fresh_folds
        else "",
        f"; resuming at model {first + 1}" if first else "",
    )
    for m in range(first, n_models):
        i = m % k
        fold_data = replace(
            data,
            train=pool.subset(np.flatnonzero(folds != i)),
            valid=pool.subset(np.flatnonzero(folds == i)),
        )
        n_train, n_held = len(fold_data.train), len(fold_data.valid)
        which = ""
        if settings.fresh_folds:
            which = f"{', fresh' if m >= k else ''} (model {m + 1}/{n_models})"
        log.info("fold %d/%d%s: %d training rows, %d held out", i + 1, k, which, n_train, n_held)
        label = f"fine-tune model {m + 1}/{n_models}"
        saved = Saved(f"{PHASE_PREFIX}{m + 1}/{n_models}", network.folds[m], label)
        phase = replace(settings.phase, seed=seed + m)
        model_settings = replace(settings, phase=phase)
        if m >= k:  # a fresh encoder has nothing to keep fixed
            model_settings = replace(model_settings, freeze_encoder_epochs=0)
        model = network.folds[m]
        history, best = fit(model, fold_data, model_settings, device, checkpointer, saved)
        histories.append(history)
        best_epochs.append(best)
        save_finished(checkpointer, network, histories, best_epochs)
    decision = settings.decision_threshold
    if own_valid:
        scores = validation_scores(network, data.valid, data.target, device, decision)
        scored_on = "validation channel (the folds' mean)"
    else:
        raw = out_of_fold(network, pool, folds, device)
        scores = scores_of(raw, pool.target, data.target, decision)
        scored_on = f"out-of-fold ({len(pool)} rows, {k} folds)"
    return CrossFit(network, histories, best_epochs, scores, scored_on, pool, folds)


def out_of_fold(
    network: CrossFitted, pool: MappedRows, folds: np.ndarray, device: torch.device
) -> torch.Tensor:
    """Each row's outputs (N, r*e, n_outputs) from the r models that did not train on it
    (r = 1, or 2 with fresh folds: model m holds out fold m mod k), side by side on the
    member dimension as the served network puts them."""
    k = int(folds.max()) + 1
    rounds = []
    for first in range(0, len(network.folds), k):
        parts = []
        for i, fold in enumerate(network.folds[first : first + k]):
            held_out = np.flatnonzero(folds == i)
            parts.append((held_out, predict_raw(fold, pool.subset(held_out), device)))
        shape = parts[0][1].shape[1:]
        raw = torch.empty((len(pool), *shape), dtype=parts[0][1].dtype)
        for held_out, out in parts:
            raw[torch.from_numpy(held_out)] = out
        rounds.append(raw)
    return torch.cat(rounds, dim=1)


def resumed_fold(checkpointer: Checkpointer, k: int) -> int:
    """The fold (0-based) the job's checkpoint was saved in; 0 without one."""
    phase = checkpointer.resumed_phase() or ""
    if not phase.startswith(PHASE_PREFIX):
        return 0
    number, _, total = phase.removeprefix(PHASE_PREFIX).partition("/")
    if total != str(k) or not number.isdigit():
        return 0
    return int(number) - 1


def finished_folds(
    checkpointer: Checkpointer, network: CrossFitted, first: int
) -> list[dict[str, Any]]:
    """The folds before `first` (the fold the checkpoint is in) as they finished: their
    histories, with their weights loaded into `network`; none when they are not all there."""
    if first == 0 or checkpointer.path is None:
        return []
    path = checkpointer.path.with_name(FOLDS_FILE)
    try:
        saved = torch.load(path, weights_only=True)
        folds = saved["folds"][:first]
        if saved["fingerprint"] != checkpointer.fingerprint or len(folds) < first:
            raise ValueError("not this job's, or too few folds")
        for fold, entry in zip(network.folds, folds, strict=False):
            fold.load_state_dict(entry["state"])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
        log.warning("the finished folds cannot be read (%s): fine-tuning starts afresh", error)
        checkpointer.discard_start(f"the finished folds in {path} cannot be read")
        return []
    log.info("resuming cross-fitting: folds 1-%d finished, from %s", first, path)
    return [{"history": f["history"], "best_epoch": f["best_epoch"]} for f in folds]


def save_finished(
    checkpointer: Checkpointer,
    network: CrossFitted,
    histories: list[list[dict[str, float]]],
    best_epochs: list[int],
) -> None:
    """Write the finished folds' weights and histories beside the checkpoint (the main
    process, atomically)."""
    if checkpointer.path is None or not checkpointer.world.is_main:
        return
    folds = [
        {"history": h, "best_epoch": b, "state": fold.state_dict()}
        for h, b, fold in zip(histories, best_epochs, network.folds, strict=False)
    ]
    checkpointer.path.parent.mkdir(parents=True, exist_ok=True)
    partial = checkpointer.path.with_name(FOLDS_FILE + ".partial")
    torch.save({"fingerprint": checkpointer.fingerprint, "folds": folds}, partial)
    partial.replace(checkpointer.path.with_name(FOLDS_FILE))

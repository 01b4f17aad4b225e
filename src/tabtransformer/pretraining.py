"""Semi-supervised pretraining of the embeddings and Transformer (paper, section 3.2).

MLM: in each row a share k of the token cells is replaced by the column's missing/mask
token (code 0); one multi-class head per column predicts each original value from its
contextual embedding; the loss counts masked cells only.
RTD: a share k of the cells is replaced by a value drawn from the same column's empirical
distribution (never the original; drawn anew every epoch); one binary head per column says
whether each cell was replaced; the loss counts every cell.

Corruption works on whole batches of integer codes. Only the categorical tokens (and the
binned continuous tokens, with `continuous_bins`) take part: continuous values in the MLP
branch are not seen by the Transformer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from tabtransformer.checkpoints import Checkpointer
from tabtransformer.distributed import World, wrap
from tabtransformer.errors import UserError
from tabtransformer.inference import EVAL_BATCH_ROWS, autocast
from tabtransformer.loop import LoopSettings, run_epochs
from tabtransformer.model import TabTransformer
from tabtransformer.preprocessing import MISSING_CODE, TablePreprocessor
from tabtransformer.settings import PhaseSettings
from tabtransformer.training import batches, optimizer_step

log = logging.getLogger(__name__)
RESAMPLE_ROUNDS = 20
MAX_HELD_OUT_ROWS = 20000


@dataclass(frozen=True)
class PretrainSettings:
    """What pretraining reads: the objective ('none': skip), corruption share, loop."""

    objective: str  # never "auto"
    corruption_rate: float
    phase: PhaseSettings

    @classmethod
    def from_hyperparameters(
        cls, hp: Mapping[str, Any], channels: set[str], pretrain_only: bool
    ) -> PretrainSettings:
        """Resolve pretrain_objective=auto: rtd when the job only pretrains, or has
        unlabeled rows and no base model; else none."""
        objective = hp["pretrain_objective"]
        if objective == "auto":
            wants = pretrain_only or ("unlabeled" in channels and "model" not in channels)
            objective = "rtd" if wants else "none"
        if pretrain_only and objective == "none":
            raise UserError(
                "pretrain_only is set (or there is no 'training' channel) but "
                "pretrain_objective=none: choose mlm or rtd."
            )
        return cls(objective, hp["corruption_rate"], PhaseSettings.pretraining(hp))


def mlm_corrupt(
    codes: torch.Tensor, rate: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask a share `rate` of the present cells; returns (corrupted codes, masked cells)."""
    chosen = torch.rand(codes.shape, generator=generator, device=codes.device) < rate
    masked = chosen & (codes != MISSING_CODE)
    return codes.masked_fill(masked, MISSING_CODE), masked


def rtd_corrupt(
    codes: torch.Tensor, pool: torch.Tensor, rate: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace a share `rate` of the cells by other values of the same column.

    `pool` (P, m) holds rows to draw values from (the column's empirical distribution).
    A draw equal to the original is drawn again; a cell whose column offers no other value
    after `RESAMPLE_ROUNDS` tries stays original and is not counted as replaced.
    Returns (corrupted codes, replaced cells).
    """
    n, m = codes.shape
    chosen = torch.rand(codes.shape, generator=generator, device=codes.device) < rate
    columns = torch.arange(m, device=codes.device).expand(n, m)
    draws = torch.empty_like(codes)
    pending = torch.ones_like(chosen)
    for _ in range(RESAMPLE_ROUNDS):
        rows = torch.randint(len(pool), (n, m), generator=generator, device=codes.device)
        candidate = pool[rows, columns]
        draws = torch.where(pending, candidate, draws)
        pending = pending & (draws == codes)
        if not (pending & chosen).any():
            break
    replaced = chosen & (draws != codes)
    return torch.where(replaced, draws, codes), replaced


class PretrainingHead(nn.Module):
    """MLM: one classifier per column over its vocabulary. RTD: one logit per column."""

    def __init__(self, objective: str, cardinalities: list[int], dim: int):
        super().__init__()
        self.objective = objective
        if objective == "mlm":
            self.classifiers = nn.ModuleList(nn.Linear(dim, c) for c in cardinalities)
        else:
            self.weight = nn.Parameter(torch.randn(len(cardinalities), dim) / math.sqrt(dim))
            self.bias = nn.Parameter(torch.zeros(len(cardinalities)))

    def loss_and_accuracy(
        self, contextual: torch.Tensor, original: torch.Tensor, corrupted_cells: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MLM: cross-entropy and accuracy on masked cells. RTD: BCE and accuracy on all."""
        if self.objective == "rtd":
            logits = torch.einsum("bmd,md->bm", contextual.float(), self.weight) + self.bias
            target = corrupted_cells.float()
            loss = F.binary_cross_entropy_with_logits(logits, target)
            accuracy = ((logits > 0) == corrupted_cells).float().mean()
            return loss, accuracy
        losses, hits, count = [], 0, 0
        for j, classifier in enumerate(self.classifiers):
            rows = corrupted_cells[:, j]
            if rows.any():
                logits = classifier(contextual[rows, j].float())
                losses.append(F.cross_entropy(logits, original[rows, j], reduction="sum"))
                hits += (logits.argmax(1) == original[rows, j]).sum()
                count += int(rows.sum())
        if not count:
            zero = contextual.sum() * 0.0
            return zero, zero.detach()
        return torch.stack(losses).sum() / count, torch.as_tensor(hits / count)


class PretrainingTask(nn.Module):
    """The network and its pretraining head as one module: forward returns the loss."""

    def __init__(self, model: TabTransformer, head: PretrainingHead):
        super().__init__()
        self.model, self.head = model, head

    def forward(
        self, corrupted: torch.Tensor, original: torch.Tensor, cells: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(corrupted.device):
            # Numeric tokens (numeric_embedding) are not corrupted or predicted yet: they
            # enter as missing, and the head sees the code columns only.
            contextual = self.model.contextual(corrupted)[:, : corrupted.shape[1]]
        return self.head.loss_and_accuracy(contextual, original, cells)


def corrupt(
    objective: str, codes: torch.Tensor, pool: torch.Tensor, rate: float, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    if objective == "mlm":
        return mlm_corrupt(codes, rate, g)
    return rtd_corrupt(codes, pool, rate, g)


def pretrain_on_rows(
    model: TabTransformer,
    pre: TablePreprocessor,
    rows: pd.DataFrame,
    settings: PretrainSettings,
    device: torch.device,
    checkpointer: Checkpointer,
) -> list[dict[str, float]]:
    """Pretrain on feature rows: a seeded tenth (at most 20,000) is held out for early
    stopping. Returns the per-epoch history."""
    if not pre.cardinalities:
        raise UserError(
            "Pretraining needs token columns, and this table has no categorical column. "
            "Set continuous_bins (e.g. 16) to bring continuous columns in, or "
            "pretrain_objective=none."
        )
    codes = torch.from_numpy(pre.transform(rows)[0])
    order = torch.randperm(len(codes), generator=torch.Generator().manual_seed(settings.phase.seed))
    n_valid = max(1, min(len(codes) // 10, MAX_HELD_OUT_ROWS))
    log.info(
        "pretraining (%s) on %d unlabeled rows, %d held out for early stopping",
        settings.objective,
        len(codes) - n_valid,
        n_valid,
    )
    train_codes, valid_codes = codes[order[n_valid:]], codes[order[:n_valid]]
    return pretrain(
        model, train_codes, valid_codes, settings, device, checkpointer, checkpointer.world
    )


def pretrain(
    model: TabTransformer,
    train_codes: torch.Tensor,
    valid_codes: torch.Tensor,
    settings: PretrainSettings,
    device: torch.device,
    checkpointer: Checkpointer | None = None,
    world: World | None = None,
) -> list[dict[str, float]]:
    """Pretrain `model`'s embeddings and Transformer in place; keeps the best epoch.

    Early stopping watches the loss on `valid_codes` (held-out unlabeled rows) under a
    fixed corruption. Resumes from and saves to `checkpointer` (phase "pretrain").
    Returns the per-epoch history.
    """
    checkpointer = checkpointer or Checkpointer(None)
    world = world or World()
    objective, rate, phase = settings.objective, settings.corruption_rate, settings.phase
    seed = phase.seed
    head = PretrainingHead(objective, model.config.cardinalities, model.config.dim)
    encoder = [p for name, p in model.named_parameters() if not name.startswith("mlp.")]
    model.to(device).train()
    head.to(device).train()
    optimizer = torch.optim.AdamW(
        [*encoder, *head.parameters()],
        lr=phase.learning_rate,
        weight_decay=phase.weight_decay,
    )
    generator = torch.Generator(device=device).manual_seed(seed)
    order = torch.Generator().manual_seed(seed)
    train_codes, valid_codes = train_codes.to(device), valid_codes.to(device)
    # The validation corruption is drawn once, so that epochs are compared on equal terms.
    fixed = torch.Generator(device=device).manual_seed(seed + 1)
    valid_corrupted, valid_cells = corrupt(objective, valid_codes, train_codes, rate, fixed)
    accuracy_name = "masked_accuracy" if objective == "mlm" else "detection_accuracy"
    task = PretrainingTask(model, head)  # what a checkpoint holds
    checkpoint = checkpointer.phase("pretrain", task, optimizer, [generator, order])
    start = checkpoint.restore()  # before DDP shares the first process's weights
    ddp_task = wrap(task, world, partial=True)

    def train_epoch() -> Iterator[tuple[float, int]]:
        for index in batches(len(train_codes), phase.batch_size, order, world):
            original = train_codes[index.to(device)]
            corrupted, cells = corrupt(objective, original, train_codes, rate, generator)
            loss, _ = ddp_task(corrupted, original, cells)
            yield optimizer_step(optimizer, loss), len(index)

    def validate() -> dict[str, float]:
        loss, accuracy = held_out_scores(task, valid_codes, valid_corrupted, valid_cells)
        return {"pretrain_loss": loss, accuracy_name: accuracy}

    loop_settings = LoopSettings(
        n_epochs=phase.n_epochs,
        patience=phase.patience,
        watch="pretrain_loss",
        higher_is_better=False,
        loss_name="pretrain_loss",
        learning_rate_name="pretrain_learning_rate",
        log_prefix=f"pretrain {objective} ",
    )
    return run_epochs(loop_settings, checkpoint, start, model, train_epoch, validate).history


@torch.inference_mode()
def held_out_scores(
    task: PretrainingTask,
    original: torch.Tensor,
    corrupted: torch.Tensor,
    cells: torch.Tensor,
) -> tuple[float, float]:
    """Mean loss and accuracy of the pretraining task on a fixed corruption."""
    task.eval()
    losses, accuracies, weights = [], [], []
    for start in range(0, len(original), EVAL_BATCH_ROWS):
        part = slice(start, start + EVAL_BATCH_ROWS)
        loss, accuracy = task(corrupted[part], original[part], cells[part])
        n = len(original[part])
        losses.append(float(loss) * n)
        accuracies.append(float(accuracy) * n)
        weights.append(n)
    task.train()
    return sum(losses) / sum(weights), sum(accuracies) / sum(weights)

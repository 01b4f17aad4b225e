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
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tabtransformer.checkpoints import Checkpointer
from tabtransformer.distributed import World, wrap
from tabtransformer.model import TabTransformer
from tabtransformer.preprocessing import MISSING_CODE
from tabtransformer.training import autocast, batches, format_duration, optimizer_step

log = logging.getLogger(__name__)
RESAMPLE_ROUNDS = 20


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


def pretrain(
    model: TabTransformer,
    train_codes: torch.Tensor,
    valid_codes: torch.Tensor,
    hp: dict[str, Any],
    objective: str,
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
    head = PretrainingHead(objective, model.config.cardinalities, model.config.dim)
    encoder = [p for name, p in model.named_parameters() if not name.startswith("mlp.")]
    model.to(device).train()
    head.to(device).train()
    optimizer = torch.optim.AdamW(
        [*encoder, *head.parameters()],
        lr=hp["pretrain_learning_rate"],
        weight_decay=hp["weight_decay"],
    )
    generator = torch.Generator(device=device).manual_seed(hp["seed"])
    order = torch.Generator().manual_seed(hp["seed"])
    train_codes, valid_codes = train_codes.to(device), valid_codes.to(device)
    rate, n_epochs = hp["corruption_rate"], hp["pretrain_epochs"]
    # The validation corruption is drawn once, so that epochs are compared on equal terms.
    fixed = torch.Generator(device=device).manual_seed(hp["seed"] + 1)
    valid_corrupted, valid_cells = corrupt(objective, valid_codes, train_codes, rate, fixed)
    accuracy_name = "masked_accuracy" if objective == "mlm" else "detection_accuracy"
    task = PretrainingTask(model, head)  # what a checkpoint holds
    checkpoint = checkpointer.phase("pretrain", task, optimizer, [generator, order])
    loop = checkpoint.restore()
    trained = wrap(task, world, partial=True)
    started, first_epoch = time.perf_counter(), loop.epoch + 1
    for epoch in range(first_epoch, n_epochs + 1):
        epoch_start = time.perf_counter()
        total, seen = 0.0, 0
        for index in batches(len(train_codes), hp["pretrain_batch_size"], order, world):
            original = train_codes[index.to(device)]
            corrupted, cells = corrupt(objective, original, train_codes, rate, generator)
            loss, _ = trained(corrupted, original, cells)
            total += optimizer_step(optimizer, loss) * len(index)
            seen += len(index)
            checkpoint.stop_if_requested(loop)
        valid_loss, valid_accuracy = evaluate(task, valid_codes, valid_corrupted, valid_cells)
        elapsed = time.perf_counter() - epoch_start
        if loop.best is None or valid_loss < loop.best:
            loop.best, loop.best_epoch = valid_loss, epoch
            loop.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        loop.epoch = epoch
        loop.history.append(
            {
                "epoch": epoch,
                "pretrain_loss": total / seen,
                "validation_pretrain_loss": valid_loss,
                accuracy_name: valid_accuracy,
            }
        )
        checkpoint.save(loop)
        stop = epoch - loop.best_epoch >= hp["pretrain_patience"]
        per_epoch = (time.perf_counter() - started) / (epoch - first_epoch + 1)
        remaining = 0 if stop else (n_epochs - epoch) * per_epoch
        log.info(
            "pretrain %s epoch %d/%d pretrain_loss=%.6g validation_pretrain_loss=%.6g "
            "validation_%s=%.4f rows/s=%.0f epoch_time=%s time_left<=%s",
            objective,
            epoch,
            n_epochs,
            total / seen,
            valid_loss,
            accuracy_name,
            valid_accuracy,
            seen / elapsed,
            format_duration(elapsed),
            format_duration(remaining),
        )
        if stop:
            log.info(
                "pretraining stopped early: no improvement for %d epochs", hp["pretrain_patience"]
            )
            break
    if loop.best_state is not None:
        model.load_state_dict(loop.best_state)
    log.info(
        "pretraining kept epoch %d (validation_pretrain_loss=%.6g)", loop.best_epoch, loop.best
    )
    return loop.history


@torch.inference_mode()
def evaluate(
    task: PretrainingTask,
    original: torch.Tensor,
    corrupted: torch.Tensor,
    cells: torch.Tensor,
    batch_rows: int = 8192,
) -> tuple[float, float]:
    """Mean loss and accuracy of the pretraining task on a fixed corruption."""
    task.eval()
    losses, accuracies, weights = [], [], []
    for start in range(0, len(original), batch_rows):
        part = slice(start, start + batch_rows)
        loss, accuracy = task(corrupted[part], original[part], cells[part])
        n = len(original[part])
        losses.append(float(loss) * n)
        accuracies.append(float(accuracy) * n)
        weights.append(n)
    task.train()
    return sum(losses) / sum(weights), sum(accuracies) / sum(weights)

"""Semi-supervised pretraining of the embeddings and Transformer (paper, section 3.2).

MLM: in each row a share k of the token cells is masked; one multi-class head per column
predicts each original value from its contextual embedding; the loss counts masked cells
only. A categorical cell is masked by the missing/mask token (code 0); a numeric token
(numeric_embedding=ple|periodic) by the column's learned missing embedding (the model's
`numeric_mask`), and its head predicts the value's bin among the column's bin edges.
RTD: a share k of the cells is replaced by the same column's value in another row (never
the original; drawn anew every epoch); one binary head per column says whether each cell
was replaced; the loss counts every cell.

Which columns take part (`pretrain_columns`): 'all' — the categorical tokens (and binned
continuous tokens, with `continuous_bins`) and the numeric tokens; 'categorical' — the
paper's method: numeric tokens enter as missing and are neither corrupted nor predicted;
'auto' (the default) — categorical when the table has categorical columns, else all.
Without numeric tokens they are the same.

Corruption works on whole batches of tensors. The run is planned in optimizer steps
(`pretrain_steps`, at most `pretrain_epochs` epochs); the learning rate warms up over the
first WARMUP_SHARE of the planned run, then follows `pretrain_lr_schedule`; early stopping
watches the loss on held-out unlabeled rows under a fixed corruption.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tabtransformer.checkpoints import Checkpointer
from tabtransformer.distributed import wrap
from tabtransformer.errors import UserError
from tabtransformer.hardware import compiled, training_autocast
from tabtransformer.host_store import MappedCells, MappedRows
from tabtransformer.inference import Encoded, eval_batch_rows
from tabtransformer.loop import LoopSettings, adamw, batches, optimizer_step, run_epochs
from tabtransformer.model import TabTransformer
from tabtransformer.preprocessing import MISSING_CODE, TablePreprocessor
from tabtransformer.schedule import learning_rate_factor, set_learning_rate
from tabtransformer.settings import PhaseSettings

log = logging.getLogger(__name__)
RESAMPLE_ROUNDS = 20
MAX_HELD_OUT_ROWS = 20000
WARMUP_SHARE = 0.05  # of the planned pretraining run
CellPool = torch.Tensor | MappedCells  # rows of one column kind that RTD draws values from


@dataclass(frozen=True)
class PretrainSettings:
    """What pretraining reads: the objective ('none': skip), corruption share, which
    columns take part, the loop, the planned steps and the learning-rate schedule."""

    objective: str  # "auto" only until JobPlan.completed counts the labelled rows
    corruption_rate: float
    phase: PhaseSettings
    columns: str = "auto"  # "auto", "all" or "categorical" (TokenColumns.of resolves auto)
    steps: int = 0  # planned optimizer steps (0: phase.n_epochs epochs)
    lr_schedule: str = "constant"  # "constant" or "cosine"

    @classmethod
    def from_hyperparameters(
        cls, hp: Mapping[str, Any], channels: set[str], pretrain_only: bool
    ) -> PretrainSettings:
        """Resolve pretrain_objective=auto where the channels decide it: rtd when the job
        only pretrains, none without an 'unlabeled' channel; with labels and unlabeled rows
        it stays auto until the labelled rows are counted (JobPlan.completed)."""
        objective = hp["pretrain_objective"]
        if objective == "auto" and (pretrain_only or "unlabeled" not in channels):
            objective = "rtd" if pretrain_only else "none"
        if pretrain_only and objective == "none":
            raise UserError(
                "pretrain_only is set (or there is no 'training' channel) but "
                "pretrain_objective=none: choose mlm or rtd."
            )
        return cls(
            objective,
            hp["corruption_rate"],
            PhaseSettings.pretraining(hp),
            hp["pretrain_columns"],
            hp["pretrain_steps"],
            hp["pretrain_lr_schedule"],
        )

    def planned_epochs(self, batches_per_epoch: int) -> int:
        """Epochs the run lasts: enough for `steps` optimizer steps, at most n_epochs."""
        if self.steps <= 0:
            return self.phase.n_epochs
        return max(1, min(self.phase.n_epochs, math.ceil(self.steps / batches_per_epoch)))


@dataclass(frozen=True)
class TokenColumns:
    """The token columns pretraining corrupts and predicts: the categorical (code) columns,
    then the numeric tokens' columns, each with its bin edges (empty: numeric cells do not
    take part; they enter the Transformer as missing)."""

    cardinalities: list[int]
    numeric_bin_edges: list[list[float]]

    @classmethod
    def of(cls, model: TabTransformer, pre: TablePreprocessor, columns: str) -> TokenColumns:
        """The token columns `pretrain_columns` names; 'auto': the categorical ones when
        the table has any (the paper's method, and what fine-tuned best on the
        semi-supervised benchmark), else the numeric tokens."""
        if columns == "auto":
            columns = "categorical" if model.config.cardinalities else "all"
            log.info("pretrain_columns=auto: %s", columns)
        numeric = model.config.numeric_tokens and columns == "all"
        edges = [list(c.bin_edges or []) for c in pre.numeric] if numeric else []
        return cls(list(model.config.cardinalities), edges)

    @property
    def numeric(self) -> bool:
        return bool(self.numeric_bin_edges)

    @property
    def n_categorical(self) -> int:
        return len(self.cardinalities)

    @property
    def class_counts(self) -> list[int]:
        """What each column's MLM head predicts among: its codes, or its value's bins."""
        return self.cardinalities + [max(len(e) - 1, 1) for e in self.numeric_bin_edges]

    def describe(self) -> str:
        return (
            f"{self.n_categorical} categorical and {len(self.numeric_bin_edges)} numeric "
            "token columns take part"
        )


def bin_index(numbers: torch.Tensor, inner_edges: torch.Tensor) -> torch.Tensor:
    """Each value's bin (N, c): how many of its column's inner edges (c, E; padded with
    +inf) are at or below it. Below the first edge: 0; above the last: the last bin."""
    return (numbers[..., None] >= inner_edges).sum(-1)


def inner_edges(bin_edges: list[list[float]], device: torch.device) -> torch.Tensor:
    """The edges between bins of each column (c, E), padded with +inf."""
    inner = [e[1:-1] for e in bin_edges]
    width = max((len(e) for e in inner), default=0)
    padded = [e + [math.inf] * (width - len(e)) for e in inner]
    return torch.tensor(padded, dtype=torch.float32, device=device).reshape(len(inner), width)


def mlm_corrupt(
    codes: torch.Tensor, rate: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask a share `rate` of the present cells; returns (corrupted codes, masked cells)."""
    chosen = torch.rand(codes.shape, generator=generator, device=codes.device) < rate
    masked = chosen & (codes != MISSING_CODE)
    return codes.masked_fill(masked, MISSING_CODE), masked


def mlm_mask_numbers(
    numbers: torch.Tensor, rate: float, generator: torch.Generator
) -> torch.Tensor:
    """Choose a share `rate` of the present numeric cells to mask (the model's numeric_mask)."""
    chosen = torch.rand(numbers.shape, generator=generator, device=numbers.device) < rate
    return chosen & ~numbers.isnan()


def rtd_corrupt(
    values: torch.Tensor, pool: CellPool, rate: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace a share `rate` of the cells by other values of the same column.

    `values` are codes (int) or numbers (float, NaN = missing, and two missing cells are
    equal). `pool` (P, m) holds rows to draw values from (the column's empirical
    distribution). A draw equal to the original is drawn again; a cell whose column offers
    no other value after `RESAMPLE_ROUNDS` tries stays original and is not counted as
    replaced. Returns (corrupted values, replaced cells).
    """
    n, m = values.shape
    chosen = torch.rand(values.shape, generator=generator, device=values.device) < rate
    columns = torch.arange(m, device=values.device).expand(n, m)
    draws = values.clone()
    pending = torch.ones_like(chosen)
    for _ in range(RESAMPLE_ROUNDS):
        rows = torch.randint(len(pool), (n, m), generator=generator, device=values.device)
        draws = torch.where(pending, pool[rows, columns], draws)
        pending = pending & same(draws, values)
        if not (pending & chosen).any():
            break
    replaced = chosen & ~same(draws, values)
    return torch.where(replaced, draws, values), replaced


def same(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cell-wise equality; for numbers, two missing (NaN) cells are equal too."""
    equal = a == b
    return equal | (a.isnan() & b.isnan()) if a.is_floating_point() else equal


@dataclass
class Corrupted:
    """A corrupted batch: model inputs, per-column targets and the corrupted cells (B, T)."""

    codes: torch.Tensor
    numbers: torch.Tensor | None
    numeric_mask: torch.Tensor | None
    targets: torch.Tensor  # MLM: original code or bin; RTD: unused (the cells are targets)
    cells: torch.Tensor


class PretrainingHead(nn.Module):
    """What an objective's head predicts from the contextual embeddings of the scored
    cells: forward gives (loss, hits per column, scored cells per column)."""

    def __init__(self, objective: Objective):
        super().__init__()
        self.objective = objective

    def loss_and_accuracy(
        self, contextual: torch.Tensor, targets: torch.Tensor, cells: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss and the accuracy over every scored cell."""
        loss, hits, counts = self(contextual, targets, cells)
        return loss, hits.sum() / counts.sum().clamp(min=1.0)


class MaskedCellHead(PretrainingHead):
    """MLM: one classifier per column over its classes (codes, or a numeric column's
    bins); cross-entropy on the masked cells only."""

    def __init__(self, objective: Objective, class_counts: list[int], dim: int):
        super().__init__(objective)
        self.classifiers = nn.ModuleList(nn.Linear(dim, c) for c in class_counts)

    def forward(
        self, contextual: torch.Tensor, targets: torch.Tensor, cells: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        losses, hits = [], []
        for j, classifier in enumerate(self.classifiers):
            rows = cells[:, j]
            logits = classifier(contextual[rows, j].float())
            losses.append(F.cross_entropy(logits, targets[rows, j], reduction="sum"))
            hits.append((logits.argmax(1) == targets[rows, j]).float().sum())
        counts = cells.float().sum(0)
        loss = torch.stack(losses).sum() / counts.sum().clamp(min=1.0)
        return loss, torch.stack(hits).detach(), counts


class ReplacedCellHead(PretrainingHead):
    """RTD: one logit per column, whether the cell was replaced; binary cross-entropy on
    every cell."""

    def __init__(self, objective: Objective, class_counts: list[int], dim: int):
        super().__init__(objective)
        self.weight = nn.Parameter(torch.randn(len(class_counts), dim) / math.sqrt(dim))
        self.bias = nn.Parameter(torch.zeros(len(class_counts)))

    def forward(
        self, contextual: torch.Tensor, targets: torch.Tensor, cells: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = torch.einsum("bmd,md->bm", contextual.float(), self.weight) + self.bias
        loss = F.binary_cross_entropy_with_logits(logits, cells.float())
        hits = ((logits > 0) == cells).float().sum(0)
        return loss, hits, torch.full_like(hits, len(cells))


class Objective:
    """A pretraining objective: how it corrupts a batch's codes and numbers, the head that
    scores the corrupted cells, and how a held-out loss is averaged."""

    name: str
    accuracy_name: str
    head_class: type[PretrainingHead]

    def head(self, class_counts: list[int], dim: int) -> PretrainingHead:
        return self.head_class(self, class_counts, dim)

    def corrupt_codes(
        self, codes: torch.Tensor, pool: CellPool, rate: float, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(corrupted codes, corrupted cells)."""
        raise NotImplementedError

    def corrupt_numbers(
        self, numbers: torch.Tensor, pool: CellPool, rate: float, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(numbers the model sees, the numeric mask or None, corrupted cells)."""
        raise NotImplementedError

    def numeric_targets(
        self, numbers: torch.Tensor, cells: torch.Tensor, edges: torch.Tensor
    ) -> torch.Tensor:
        """What the head predicts for the numeric cells."""
        raise NotImplementedError

    def loss_weight(self, counts: torch.Tensor, n_rows: int) -> float:
        """The weight of a batch's mean loss in a held-out average."""
        raise NotImplementedError


class MaskedLanguageModelling(Objective):
    """MLM: mask cells, predict each masked cell's value (a numeric cell's bin)."""

    name, accuracy_name, head_class = "mlm", "masked_accuracy", MaskedCellHead

    def corrupt_codes(self, codes, pool, rate, generator):
        return mlm_corrupt(codes, rate, generator)

    def corrupt_numbers(self, numbers, pool, rate, generator):
        mask = mlm_mask_numbers(numbers, rate, generator)
        return numbers, mask, mask

    def numeric_targets(self, numbers, cells, edges):
        return bin_index(numbers, edges)

    def loss_weight(self, counts, n_rows):
        return float(counts.sum())  # the loss averages over masked cells


class ReplacedTokenDetection(Objective):
    """RTD: replace cells by other rows' values, detect which were replaced."""

    name, accuracy_name, head_class = "rtd", "detection_accuracy", ReplacedCellHead

    def corrupt_codes(self, codes, pool, rate, generator):
        return rtd_corrupt(codes, pool, rate, generator)

    def corrupt_numbers(self, numbers, pool, rate, generator):
        replaced, cells = rtd_corrupt(numbers, pool, rate, generator)
        return replaced, None, cells

    def numeric_targets(self, numbers, cells, edges):
        return cells.long()  # unused: the cells are the targets

    def loss_weight(self, counts, n_rows):
        return float(n_rows)  # the loss averages over rows


# Every objective by its `pretrain_objective` name (options.PRETRAINING_OBJECTIVES).
OBJECTIVES: dict[str, Objective] = {
    o.name: o for o in (MaskedLanguageModelling(), ReplacedTokenDetection())
}


class Corruptor:
    """Corrupts batches of rows (codes and, when they take part, numbers) by one objective."""

    def __init__(
        self, objective: str, rate: float, columns: TokenColumns, pool: Encoded | MappedRows
    ) -> None:
        self.objective = OBJECTIVES[objective]
        self.rate, self.columns = rate, columns
        # RTD's replacement values come from the pool's rows: on a CPU read from the host's
        # memory-mapped table cell by cell, never gathered whole.
        self.codes_pool, self.numbers_pool = pool.cell_pools()
        self.edges = inner_edges(columns.numeric_bin_edges, self.codes_pool.device)

    def __call__(self, rows: Encoded, generator: torch.Generator) -> Corrupted:
        objective, rate = self.objective, self.rate
        codes, cells = objective.corrupt_codes(rows.codes, self.codes_pool, rate, generator)
        if not self.columns.numeric:
            return Corrupted(codes, None, None, rows.codes, cells)
        numbers, mask, numeric_cells = objective.corrupt_numbers(
            rows.numbers, self.numbers_pool, rate, generator
        )
        numeric_targets = objective.numeric_targets(rows.numbers, numeric_cells, self.edges)
        return Corrupted(
            codes,
            numbers,
            mask,
            torch.cat([rows.codes, numeric_targets], 1),
            torch.cat([cells, numeric_cells], 1),
        )


class PretrainingTask(nn.Module):
    """The network and its pretraining head as one module: forward returns the loss."""

    def __init__(self, model: TabTransformer, head: PretrainingHead):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, batch: Corrupted) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with training_autocast(batch.codes.device, self.model.config.n_tokens):
            # Without `numbers`, numeric tokens enter as missing and are not predicted.
            contextual = self.model.contextual(batch.codes, batch.numbers, batch.numeric_mask)
        return self.head(contextual[:, : batch.cells.shape[1]], batch.targets, batch.cells)


def pretrain_on_rows(
    model: TabTransformer,
    pre: TablePreprocessor,
    rows: MappedRows,
    settings: PretrainSettings,
    device: torch.device,
    checkpointer: Checkpointer,
) -> list[dict[str, float]]:
    """Pretrain on the host's encoded feature rows: a seeded tenth (at most 20,000) is held
    out for early stopping (gathered in memory); the rest stay a view of the memory-mapped
    table, as in fine-tuning. Returns the per-epoch history."""
    columns = TokenColumns.of(model, pre, settings.columns)
    if not columns.class_counts:
        raise UserError(
            "Pretraining needs token columns, and this table has no categorical column. "
            "Set numeric_embedding=auto, ple or periodic (numeric_attention other than none) to "
            "bring numeric columns in, or pretrain_objective=none."
        )
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(settings.phase.seed))
    n_valid = held_out_rows(len(rows))
    check_pretraining_rows(len(rows), n_valid, checkpointer.world.size)
    log.info(
        "pretraining (%s) on %d unlabeled rows, %d held out for early stopping; %s",
        settings.objective,
        len(rows) - n_valid,
        n_valid,
        columns.describe(),
    )
    order = order.numpy()
    held_out = PretrainRows(rows.subset(order[n_valid:]), rows.rows(order[:n_valid]), columns)
    return pretrain(model, held_out, settings, device, checkpointer)


def held_out_rows(n_rows: int) -> int:
    """How many of `n_rows` pretraining rows early stopping holds out: a tenth, 1 to
    MAX_HELD_OUT_ROWS."""
    return max(1, min(n_rows // 10, MAX_HELD_OUT_ROWS))


def check_pretraining_rows(n_rows: int, n_valid: int, n_processes: int) -> None:
    """Every process needs a pretraining row an epoch (with none it has no batch, and the
    others wait for it): a UserError otherwise, the same on every process (every process
    pretrains on the same rows)."""
    if n_rows - n_valid >= n_processes:
        return
    raise UserError(
        f"Pretraining has {n_rows} feature row(s) (training and unlabeled rows): after "
        f"{n_valid} held out for early stopping, {n_rows - n_valid} remain, fewer than the "
        f"{n_processes} training process(es): every process needs at least one row an "
        f"epoch. Add rows (at least {n_processes + n_valid}, e.g. to the 'unlabeled' "
        "channel), run fewer processes (PROCESSES_PER_HOST, or fewer instances or GPUs), "
        "or set pretrain_objective=none."
    )


@dataclass(frozen=True)
class PretrainRows:
    """The rows pretraining learns from, the held-out rows its early stopping watches,
    and the token columns that take part (None: the categorical ones)."""

    train: Encoded | MappedRows
    valid: Encoded
    columns: TokenColumns | None = None


def pretrain(
    model: TabTransformer,
    rows: PretrainRows,
    settings: PretrainSettings,
    device: torch.device,
    checkpointer: Checkpointer | None = None,
) -> list[dict[str, float]]:
    """Pretrain `model`'s embeddings and Transformer in place; keeps the best epoch.

    The token columns of `rows` are corrupted and predicted; the processes are
    `checkpointer`'s. Early stopping watches the loss on the held-out rows under a fixed
    corruption. Resumes from and saves to `checkpointer` (phase "pretrain"). Returns the
    history.
    """
    checkpointer = checkpointer or Checkpointer(None)
    world = checkpointer.world
    train, valid = rows.train, rows.valid
    columns = rows.columns or TokenColumns(list(model.config.cardinalities), [])
    objective, phase = settings.objective, settings.phase
    seed = phase.seed
    head = OBJECTIVES[objective].head(columns.class_counts, model.config.dim)
    encoder = model.encoder_parameters()
    model.to(device).train()
    head.to(device).train()
    optimizer = adamw([*encoder, *head.parameters()], phase, device)
    generator = torch.Generator(device=device).manual_seed(seed)
    order = torch.Generator().manual_seed(seed)
    train, valid = train.to(device), valid.to(device)
    corrupt = Corruptor(objective, settings.corruption_rate, columns, train)
    # The validation corruption is drawn once, so that epochs are compared on equal terms.
    valid_corrupted = corrupt(valid, torch.Generator(device=device).manual_seed(seed + 1))
    batches_per_epoch = max(1, math.ceil(len(train) // world.size / phase.batch_size))
    n_epochs = settings.planned_epochs(batches_per_epoch)
    log.info(
        "pretraining plan: %d epochs of %d steps (pretrain_steps=%d, pretrain_epochs=%d), "
        "learning rate %s with %.0f%% warm-up",
        n_epochs,
        batches_per_epoch,
        settings.steps,
        phase.n_epochs,
        settings.lr_schedule,
        100 * WARMUP_SHARE,
    )
    task = PretrainingTask(model, head)  # what a checkpoint holds
    checkpoint = checkpointer.phase("pretrain", task, optimizer, [generator, order])
    start = checkpoint.restore()  # before DDP shares the first process's weights
    ddp_task = compiled(wrap(task, world, partial=True), phase.compile, "pretraining model")
    epoch = start.epoch  # the last finished epoch; each train_epoch() runs the next one

    def train_epoch() -> Iterator[tuple[torch.Tensor, int]]:
        nonlocal epoch
        epoch += 1
        epoch_batches = batches(len(train), phase.batch_size, order, world, device)
        for step, index in enumerate(epoch_batches):
            progress = epoch - 1 + (step + 1) / len(epoch_batches)
            factor = learning_rate_factor(
                progress, n_epochs, WARMUP_SHARE * n_epochs, settings.lr_schedule
            )
            set_learning_rate(optimizer, phase.learning_rate * factor)
            loss, _, _ = ddp_task(corrupt(train.rows(index), generator))
            yield optimizer_step(optimizer, loss), len(index)

    def validate() -> dict[str, float]:
        return held_out_scores(task, valid, valid_corrupted, columns)

    loop_settings = LoopSettings(
        n_epochs=n_epochs,
        patience=phase.patience,
        watch="pretrain_loss",
        higher_is_better=False,
        loss_name="pretrain_loss",
        learning_rate_name="pretrain_learning_rate",
        learning_rate=phase.learning_rate,
        log_prefix=f"pretrain {objective} ",
        label=f"pretrain {objective}",
    )
    return run_epochs(loop_settings, checkpoint, start, model, train_epoch, validate).history


@torch.inference_mode()
def held_out_scores(
    task: PretrainingTask, rows: Encoded, corrupted: Corrupted, columns: TokenColumns
) -> dict[str, float]:
    """Mean loss and accuracy of the pretraining task on a fixed corruption of `rows`; the
    accuracy on the categorical and on the numeric columns too when numeric cells take
    part."""
    task.eval()
    objective = task.head.objective
    loss_sum, hits, counts = 0.0, 0.0, 0.0
    step = eval_batch_rows(corrupted.codes.device, task.model.config)
    for start in range(0, len(rows), step):
        part = slice(start, start + step)
        numbers = corrupted.numbers[part] if corrupted.numbers is not None else None
        mask = corrupted.numeric_mask[part] if corrupted.numeric_mask is not None else None
        batch = Corrupted(
            corrupted.codes[part], numbers, mask, corrupted.targets[part], corrupted.cells[part]
        )
        loss, batch_hits, batch_counts = task(batch)
        loss_sum += float(loss) * objective.loss_weight(batch_counts, len(batch.codes))
        hits, counts = hits + batch_hits.cpu(), counts + batch_counts.cpu()
    task.train()
    total = objective.loss_weight(counts, len(rows))
    name = objective.accuracy_name
    scores = {"pretrain_loss": loss_sum / max(total, 1.0), name: accuracy(hits, counts)}
    if columns.numeric:
        m = columns.n_categorical
        if m:
            scores[f"categorical_{name}"] = accuracy(hits[:m], counts[:m])
        scores[f"numeric_{name}"] = accuracy(hits[m:], counts[m:])
    return scores


def accuracy(hits: torch.Tensor | float, counts: torch.Tensor | float) -> float:
    total = float(torch.as_tensor(counts).sum())
    return float(torch.as_tensor(hits).sum()) / total if total else math.nan

"""A training job's plan: every setting resolved once, into typed parts.

`JobPlan.read(paths)` reads the hyperparameters and the channels before any table is
read; `plan.completed(facts)` finishes it once the tables are read (`TableFacts`: the
task, the labelled rows, the columns; a base artifact's network applies when there is
one). Each `auto` is resolved in one of those two places and logged once:
- `pretrain_objective` (before reading: rtd when the job only pretrains, none without an
  `unlabeled` channel; otherwise once the labelled rows are counted: rtd with at most
  FEW_LABELS_TO_PRETRAIN of them, no base model, a token column to predict and a row for
  every process, else none),
- `task` (by the target encoder, from the labels: `completed` takes its answer),
- `numeric_embedding` (once the task and the objective are known: periodic for a binary
  task that does not pretrain, PLE otherwise and in any job that pretrains, as the
  benchmarks measured — docs/benchmarks.md) and
  `numeric_attention` (once the objective is known too: all blocks when the job
  pretrains or the table has no categorical column, none for a regression table, the
  first otherwise) and `numeric_flags` (then: numeric columns with at most two values
  skip every block where numeric tokens take the first only),
- `eval_metric` (the task's default metric: log_loss for classification, rmse otherwise),
- `patience` (10; 15 with at most FEW_LABELS labelled training rows),
- `learning_rate` (by task: training.LEARNING_RATE),
- `cv_folds` (once the labelled rows are counted: FEW_LABEL_FOLDS cross-fitted models with
  at most FEW_LABELS labelled training rows, else one),
- `fold_starts` (then: cross-fitted models from a pretrained encoder are joined by as many
  fresh ones).
Everything after reads the plan's parts, never the raw hyperparameters (which travel
only into the artifact's `hyperparameters.json` and the checkpoint's identity).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from tabtransformer import hyperparameters
from tabtransformer.channels import read_json_config, validate_channels
from tabtransformer.errors import UserError
from tabtransformer.options import NUMERIC_ATTENTION, NUMERIC_EMBEDDINGS
from tabtransformer.paths import SageMakerPaths
from tabtransformer.pretraining import PretrainSettings, held_out_rows
from tabtransformer.settings import pick
from tabtransformer.tables import TableSettings
from tabtransformer.training import FitSettings

if TYPE_CHECKING:
    from tabtransformer.model import TabTransformerConfig

log = logging.getLogger(__name__)
# The few-label recipe (docs/semi-supervised.md): with at most FEW_LABELS labelled training
# rows, cv_folds=auto trains FEW_LABEL_FOLDS cross-fitted models and patience=auto waits
# longer (training.FEW_LABEL_PATIENCE).
FEW_LABELS = 1000
FEW_LABEL_FOLDS = 5
# With at most this many labelled rows and an `unlabeled` channel, pretrain_objective=auto
# pretrains (RTD on the categorical columns) and fold_starts=auto adds as many fresh
# cross-fitted models: against no pretraining with PLR's starting frequencies of 0.1, on
# the semi-supervised benchmark, that added 1.5 AUC points at 50 labels and 0.14 at 100,
# and nothing at 200 (-0.02), for a pretraining and twice the fine-tuning
# (docs/benchmarks.md).
FEW_LABELS_TO_PRETRAIN = 100


@dataclass(frozen=True)
class TableFacts:
    """What the read tables (and a base artifact) tell the plan (`JobPlan.completed`)."""

    task: str | None = None  # None: a pretraining-only job
    labelled_rows: int = 0  # the training rows cross-fitting would split, with the hold-out
    sharded: bool = False  # each host trains on its own rows (no cross-fitting)
    may_pretrain: bool = True  # every process can read every feature row
    code_columns: int = 0  # categorical (and continuous_bins) token columns
    numeric_columns: int = 0
    feature_rows: int = 0  # the rows pretraining would learn from (training and unlabeled)
    processes: int = 1
    base_network: TabTransformerConfig | None = None  # the 'model' channel's network's
    base_pretrained: bool = False  # the 'model' channel holds a pretraining-only artifact


@dataclass(frozen=True)
class NetworkSettings:
    """The network's shape as the hyperparameters ask for it (the table's columns and the
    outputs come later); `numeric_embedding` may be "auto" until the plan is completed."""

    input_dim: int
    n_blocks: int
    n_heads: int
    frac_shared_embed: float
    attn_dropout: float
    mlp_dropout: float
    continuous_norm: str
    numeric_embedding: str
    numeric_bins: int
    frequency_init_scale: float
    numeric_attention: str  # "auto" or one of options.NUMERIC_ATTENTION
    numeric_flags: str  # "auto" or one of options.NUMERIC_FLAGS
    ensemble_size: int
    ensemble_head: str
    mlp_hidden_cap: int

    @classmethod
    def from_hyperparameters(cls, hp: Mapping[str, Any]) -> NetworkSettings:
        return pick(cls, hp)

    @property
    def numeric_embedded(self) -> bool:
        """Whether numeric columns are embedded ("auto" always embeds them)."""
        kind = self.numeric_embedding
        return kind == "auto" or NUMERIC_EMBEDDINGS[kind].tokens

    @property
    def numeric_tokens(self) -> bool:
        """Whether numeric columns become tokens through the Transformer ("auto" counts as
        tokens until it is resolved)."""
        return self.numeric_embedded and self.numeric_attention != "none"

    @property
    def bins_per_numeric_column(self) -> int:
        """The most quantile bins a numeric column's edges hold (0: none are made)."""
        return self.numeric_bins if self.numeric_embedded else 0

    def for_task(self, task: str | None, pretrains: bool = False) -> NetworkSettings:
        """numeric_embedding=auto made concrete: 'periodic' for binary classification,
        'ple' otherwise (regression, multiclass) and in a job that pretrains (with labels
        or without: the few-label evidence fine-tuned PLE encoders), as the benchmarks
        measured (docs/benchmarks.md); a chosen embedding is kept."""
        if self.numeric_embedding != "auto":
            return self
        kind = "periodic" if task == "binary" and not pretrains else "ple"
        why = "a job that pretrains" if pretrains else f"a {task or 'unlabeled'} task"
        log.info("numeric_embedding=auto: %s numeric tokens for %s", kind, why)
        return replace(self, numeric_embedding=kind)

    def for_table(self, facts: TableFacts, pretrains: bool) -> NetworkSettings:
        """numeric_attention=auto made concrete, as the accuracy benchmark measured
        (docs/benchmarks.md): 'all' blocks in a job that pretrains (as the few-label
        evidence was measured) and in a table without categorical columns (its numeric
        tokens have nothing to wait for), 'none' for a regression table with categorical
        columns, 'first' otherwise. A chosen value is kept."""
        if self.numeric_attention != "auto":
            return self.with_flags()
        if pretrains:
            attention, why = "all", "a job that pretrains"
        elif not facts.code_columns:
            attention, why = "all", "a table without categorical columns"
        elif facts.task == "regression":
            attention, why = "none", "a regression table with categorical columns"
        else:
            attention, why = "first", f"a {facts.task} table"
        log.info("numeric_attention=auto: %s (numeric tokens) for %s", attention, why)
        return replace(self, numeric_attention=attention).with_flags()

    def with_flags(self) -> NetworkSettings:
        """numeric_flags=auto made concrete once numeric_attention is: 'skip' where numeric
        tokens take the first block only, as the accuracy benchmark measured
        (docs/benchmarks.md), 'attend' otherwise. A chosen value is kept."""
        if self.numeric_flags != "auto":
            return self
        flags = "skip" if self.numeric_tokens and self.numeric_attention == "first" else "attend"
        if self.numeric_tokens:
            log.info("numeric_flags=auto: %s (numeric_attention=%s)", flags, self.numeric_attention)
        return replace(self, numeric_flags=flags)

    def config(self) -> TabTransformerConfig:
        """The network config of this shape (no columns yet)."""
        from tabtransformer.model import TabTransformerConfig  # torch: only when building

        if "auto" in (self.numeric_embedding, self.numeric_attention, self.numeric_flags):
            raise ValueError(
                "numeric_embedding, numeric_attention and numeric_flags are resolved by completed"
            )
        return TabTransformerConfig(
            dim=self.input_dim,
            n_blocks=self.n_blocks,
            n_heads=self.n_heads,
            frac_shared_embed=self.frac_shared_embed,
            attn_dropout=self.attn_dropout,
            mlp_dropout=self.mlp_dropout,
            continuous_norm=self.continuous_norm,
            numeric_embedding=self.numeric_embedding,
            frequency_init_scale=self.frequency_init_scale,
            numeric_blocks=NUMERIC_ATTENTION[self.numeric_attention],
            ensemble_size=self.ensemble_size,
            ensemble_head=self.ensemble_head,
            mlp_hidden_cap=self.mlp_hidden_cap,
        )


@dataclass(frozen=True)
class ReportSettings:
    """What the training report reads."""

    enabled: bool
    eval_metric: str  # resolved (never "auto") once the plan is completed
    seed: int


@dataclass(frozen=True)
class JobPlan:
    """What one training job does, resolved from its hyperparameters and channels."""

    paths: SageMakerPaths
    hyperparameters: Mapping[str, Any]  # the validated values, for the artifact
    channels: frozenset[str]
    tables: TableSettings
    pretraining: PretrainSettings
    network: NetworkSettings
    report: ReportSettings
    fit: FitSettings | None = None  # set by `completed` for a job with labels
    task: str | None = None  # set by `completed` ("binary", "multiclass", "regression")

    @classmethod
    def read(cls, paths: SageMakerPaths) -> JobPlan:
        """The plan before any table is read (a bad value or channel is a UserError)."""
        hp = hyperparameters.parse(read_json_config(paths.hyperparameters, {}))
        channels = frozenset(validate_channels(paths))
        network = NetworkSettings.from_hyperparameters(hp)
        tables = TableSettings.from_hyperparameters(hp, channels, network.bins_per_numeric_column)
        pretraining = PretrainSettings.from_hyperparameters(hp, set(channels), tables.pretrain_only)
        if hp["pretrain_objective"] == "auto" and pretraining.objective != "auto":
            log.info("pretrain_objective=auto: %s", pretraining.objective)
        report = ReportSettings(hp["report"], hp["eval_metric"], hp["seed"])
        return cls(paths, hp, channels, tables, pretraining, network, report)

    @property
    def has_validation(self) -> bool:
        """Whether the job has a `validation` channel (else it holds rows out of training)."""
        return "validation" in self.channels

    @property
    def from_base(self) -> bool:
        """Whether the job fine-tunes (or pretrains further) a model from its `model` channel."""
        return "model" in self.channels

    @property
    def pretrains(self) -> bool:
        """Whether the job pretrains (an error before `completed` resolves "auto")."""
        if self.pretraining.objective == "auto":
            raise RuntimeError("pretrain_objective=auto is resolved by JobPlan.completed")
        return self.pretraining.objective != "none"

    def completed(self, facts: TableFacts) -> JobPlan:
        """The plan once the tables are read: the target's task, the labelled rows and the
        token columns resolve what the hyperparameters left to them (`facts`)."""
        network, base = self.network, facts.base_network
        if base is not None:  # its embeddings and Transformer are reused: so is their layout
            blocks = {v: k for k, v in NUMERIC_ATTENTION.items()}.get(base.numeric_blocks, "all")
            network = replace(
                network, numeric_embedding=base.numeric_embedding, numeric_attention=blocks
            )
        pretraining = self.pretraining
        if pretraining.objective == "auto":
            objective = resolve_objective(facts, self.from_base, network, pretraining.columns)
            pretraining = replace(pretraining, objective=objective)
        pretrains = pretraining.objective != "none"
        network = network.for_task(facts.task, pretrains).for_table(facts, pretrains)
        task, labelled_rows = facts.task, facts.labelled_rows
        if task is None:
            return replace(self, network=network, pretraining=pretraining)
        few = labelled_rows <= FEW_LABELS
        fit = FitSettings.from_hyperparameters(
            self.hyperparameters, task, "unlabeled" in self.channels, few
        )
        if self.hyperparameters["eval_metric"] == "auto":
            log.info("eval_metric=auto: %s for a %s task", fit.eval_metric, task)
        if self.hyperparameters["learning_rate"] == 0:
            log.info("learning_rate=auto: %g for a %s task", fit.phase.learning_rate, task)
        if self.hyperparameters["patience"] == 0:
            log.info(
                "patience=auto: %d for %d labelled training rows", fit.phase.patience, labelled_rows
            )
        folds = resolve_folds(self.hyperparameters["cv_folds"], labelled_rows, facts.sharded)
        pretrained = pretraining.objective != "none" or facts.base_pretrained
        fresh = resolve_fold_starts(self.hyperparameters["fold_starts"], folds, pretrained)
        fit = replace(fit, folds=folds, fresh_folds=fresh)
        report = replace(self.report, eval_metric=fit.eval_metric)
        return replace(
            self, network=network, fit=fit, task=task, report=report, pretraining=pretraining
        )

    @property
    def semi_supervised(self) -> bool:
        return self.fit is not None and self.fit.semi_supervised != "none"


def resolve_objective(
    facts: TableFacts, from_base: bool, network: NetworkSettings, columns: str
) -> str:
    """pretrain_objective=auto for a job with labels and an 'unlabeled' channel: rtd with
    at most FEW_LABELS_TO_PRETRAIN labelled rows; none from a base model (pretrained
    already), where hosts hold different rows, where no column makes a token pretraining
    could predict (`network`, `columns`: pretrain_columns), or with too few feature rows
    for every process."""
    tokens = facts.code_columns > 0 or (
        columns != "categorical" and network.numeric_tokens and facts.numeric_columns > 0
    )
    spare = facts.feature_rows - held_out_rows(facts.feature_rows)
    if from_base:
        objective, why = "none", "fine-tuning the 'model' channel's network"
    elif not facts.may_pretrain:
        objective, why = "none", "the rows are sharded across hosts"
    elif facts.labelled_rows > FEW_LABELS_TO_PRETRAIN:
        objective = "none"
        why = f"{facts.labelled_rows} labelled rows, more than {FEW_LABELS_TO_PRETRAIN}: "
        why += "the 'unlabeled' channel informs the preprocessing"
    elif not tokens:
        objective = "none"
        why = "no token column to pretrain on: no categorical column, and pretrain_columns="
        why += f"{columns} with numeric_embedding={network.numeric_embedding} and "
        why += f"numeric_attention={network.numeric_attention}"
    elif spare < facts.processes:
        objective = "none"
        why = f"{facts.feature_rows} feature rows, too few for {facts.processes} processes"
    else:
        objective = "rtd"
        why = f"{facts.labelled_rows} labelled rows, at most {FEW_LABELS_TO_PRETRAIN}: "
        why += "pretrain on the 'unlabeled' channel"
    log.info("pretrain_objective=auto: %s (%s)", objective, why)
    return objective


def resolve_fold_starts(fold_starts: str, folds: int, pretrained: bool) -> bool:
    """Whether k fresh cross-fitted models join the k that start from the pretrained
    encoder (`fold_starts`; auto: whenever there are both); a UserError where they cannot."""
    if fold_starts == "pretrained_and_fresh" and (folds < 2 or not pretrained):
        raise UserError(
            "fold_starts=pretrained_and_fresh trains cross-fitted models from a pretrained "
            f"encoder and fresh ones, and this job has {folds} model(s) and "
            f"{'a' if pretrained else 'no'} pretrained encoder: it needs cv_folds >= 2 (or "
            "auto with at most 1000 labelled rows) and pretraining (an 'unlabeled' channel "
            "with pretrain_objective=rtd or mlm, or a pretrained artifact in the 'model' "
            "channel); or set fold_starts=auto."
        )
    fresh = fold_starts != "pretrained" and folds >= 2 and pretrained
    if fold_starts == "auto" and fresh:
        log.info(
            "fold_starts=auto: pretrained_and_fresh (%d folds from the pretrained encoder, "
            "%d fresh on the same folds)",
            folds,
            folds,
        )
    return fresh


def resolve_folds(cv_folds: int, labelled_rows: int, sharded: bool) -> int:
    """How many cross-fitted models: `cv_folds`, or (0, auto) FEW_LABEL_FOLDS with at most
    FEW_LABELS labelled rows and one model otherwise; a UserError for folds that cannot be
    made (each needs two rows; hosts that train on their own rows)."""
    if cv_folds == 0:
        few = labelled_rows <= FEW_LABELS and labelled_rows >= 2 * FEW_LABEL_FOLDS
        folds = FEW_LABEL_FOLDS if few and not sharded else 1
        log.info("cv_folds=auto: %d for %d labelled training rows", folds, labelled_rows)
        return folds
    if cv_folds > 1 and sharded:
        raise UserError(
            f"cv_folds={cv_folds} splits every labelled row into folds, and the training "
            "channel is ShardedByS3Key (each host trains on its own rows): use "
            "FullyReplicated for it, or cv_folds=1."
        )
    if cv_folds > 1 and labelled_rows < 2 * cv_folds:
        raise UserError(
            f"cv_folds={cv_folds} needs at least {2 * cv_folds} labelled training rows (two "
            f"a fold), and the job has {labelled_rows}: add rows or choose fewer folds."
        )
    return max(cv_folds, 1)

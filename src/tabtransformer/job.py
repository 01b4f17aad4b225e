"""The training job, start to end, as one readable flow (`run`).

plan -> tables -> plan completed -> model -> pretraining? -> fine-tuning -> artifact -> report.
Settings are resolved in `plan`, reading and checking the channels is in `channels` and
`tables`, the loops in `training`, `pretraining` and `loop`; this module puts them in order.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tabtransformer.artifacts import Artifact, read_base_artifact, save_artifact
from tabtransformer.checkpoints import Checkpointer, StopFlag, fingerprint
from tabtransformer.crossfit import fit_folds
from tabtransformer.distributed import World
from tabtransformer.host_store import MappedRows, scratch_folder
from tabtransformer.model import CrossFitted, Network, TabTransformer, TabTransformerConfig
from tabtransformer.options import NUMERIC_EMBEDDINGS
from tabtransformer.paths import SageMakerPaths
from tabtransformer.plan import JobPlan, NetworkSettings, TableFacts
from tabtransformer.preprocessing import TablePreprocessor
from tabtransformer.pretraining import pretrain_on_rows
from tabtransformer.reports import ReportInputs, write_history, write_training_report
from tabtransformer.tables import Tables, check_sharding, load_tables
from tabtransformer.training import FitData, final_scores, fit

log = logging.getLogger(__name__)
TIMINGS = "timings.json"  # in output/data: StageClock's seconds per stage


def run(
    paths: SageMakerPaths,
    world: World | None = None,
    scratch: Path | None = None,
    process_started: float | None = None,
) -> None:
    """Run one training job over the `/opt/ml` tree `paths` (as process `world.rank`);
    `scratch`: the host's folder for the encoded tables (None: a temporary one);
    `process_started`: when the process started (`time.monotonic()`), for its start-up."""
    clock = StageClock(process_started or time.monotonic())
    clock.lap("start_up")
    world = world or World()
    plan = JobPlan.read(paths)
    torch.manual_seed(plan.tables.seed)
    base_dir = paths.channel("model")
    base = read_base_artifact(base_dir, plan.tables.header) if plan.from_base else None
    may_pretrain = check_sharding(paths, plan.channels, world, plan.pretraining.objective)
    with scratch_folder(scratch) as folder:
        tables = load_tables(paths, plan.tables, base.preprocessor if base else None, world, folder)
        labelled = tables.labelled
        facts = TableFacts(
            task=labelled.target.task if labelled else None,
            may_pretrain=may_pretrain,
            code_columns=len(tables.pre.cardinalities),
            numeric_columns=len(tables.pre.numeric),
            feature_rows=len(tables.features),
            processes=world.size,
            base_network=base.model.config if base else None,
            base_pretrained=base is not None and base.target is None,
        )
        if labelled is not None:
            held_out = 0 if plan.has_validation else len(labelled.valid)
            sharded = labelled.rows_per_rank is not None
            facts = replace(facts, labelled_rows=len(labelled.train) + held_out, sharded=sharded)
        plan = plan.completed(facts)
        clock.lap("tables")
        with StopFlag() as stop:
            train(plan, tables, base, world, clock, stop)


def train(
    plan: JobPlan,
    tables: Tables,
    base: Artifact | None,
    world: World,
    clock: StageClock,
    stop: StopFlag,
) -> None:
    """Pretrain and/or fine-tune on the loaded tables, then write the artifact and report;
    `clock`: the stages' times; `stop`: SIGTERM's flag (a checkpoint, then `Stopped`)."""
    labelled = tables.labelled
    n_outputs = labelled.target.n_outputs if labelled else 1
    model = build_model(plan.network, tables.pre, n_outputs, base)
    device = world.device()
    log.info(
        "model: %s parameters on %s", f"{sum(p.numel() for p in model.parameters()):,}", device
    )
    clock.lap("model")
    target = labelled.target.to_dict() if labelled else None
    schema = {"features": tables.pre.to_dict(), "target": target}
    job_id = fingerprint(dict(plan.hyperparameters), schema, tables.n_rows_all_hosts)
    checkpointer = Checkpointer(plan.paths.checkpoints, job_id, stop, world)
    resumed = checkpointer.resumed_phase(model) or ""  # a fold has the model's shape
    if plan.pretrains and not resumed.startswith("finetune"):
        features = tables.features
        history = pretrain_on_rows(
            model, tables.pre, features, plan.pretraining, device, checkpointer
        )
        if world.is_main:
            write_history(
                plan.paths.output_data, "pretraining_history", history, plan.report.enabled
            )
        clock.lap("pretraining", [history])
    pretrained = plan.pretraining.objective if plan.pretrains else None
    if labelled is None:
        if world.is_main:
            summary = {"pretrained": pretrained}
            artifact = Artifact(model.cpu(), tables.pre, None, plan.tables.header, summary)
            save_artifact(plan.paths.model, artifact, dict(plan.hyperparameters))
            log.info("pretrained model written to %s", plan.paths.model)
            clock.lap("artifact")
            clock.write(plan.paths.output_data)
        return
    unlabeled = None
    if plan.semi_supervised:
        train_rows = labelled.train
        unlabeled = tables.features.subset(np.arange(len(train_rows), len(tables.features)))
    data = FitData(
        labelled.train, labelled.valid, labelled.target, unlabeled, labelled.rows_per_rank
    )
    encoder_from = model if (plan.pretrains or base is not None) else None
    result = fine_tune(plan, model, data, encoder_from, device, checkpointer)
    clock.lap("fine_tuning", list(result.histories.values()))
    if not world.is_main:
        return  # the other processes train; the first one reports and writes
    result.summary["pretrained"] = pretrained or ("from model channel" if base else None)
    for name, history in result.histories.items():
        write_history(plan.paths.output_data, name, history, plan.report.enabled)
    network = result.network.cpu()
    target = replace(labelled.target, threshold=result.summary["decision_threshold"])
    artifact = Artifact(network, tables.pre, target, plan.tables.header, result.summary)
    save_artifact(plan.paths.model, artifact, dict(plan.hyperparameters))
    log.info("model written to %s", plan.paths.model)
    clock.lap("artifact")
    report = plan.report
    shown, rows = result.report_on
    inputs = ReportInputs(
        shown, tables.pre, target, rows, result.summary, report.eval_metric, device,
        report.seed,
    )  # fmt: skip
    write_training_report(
        plan.paths.output_data, report.enabled, inputs, time.monotonic() - clock.started
    )
    clock.lap("report")
    clock.write(plan.paths.output_data)


@dataclass
class StageClock:
    """Where a job's time goes: the seconds of each stage since the previous one (`lap`),
    with the epochs' training and validation shares of a training phase; logged at the end
    and written to output/data/timings.json (the accuracy benchmark reads it)."""

    started: float  # time.monotonic() at the process's start
    seconds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._last = self.started

    def lap(self, stage: str, histories: list[list[dict[str, float]]] | None = None) -> None:
        now = time.monotonic()
        self.seconds[stage] = now - self._last
        self._last = now
        rows = [row for history in histories or [] for row in history]
        if histories is not None:
            self.seconds[f"{stage}_epochs"] = len(rows)
            for part in ("train", "validation"):
                self.seconds[f"{stage}_{part}"] = sum(r.get(f"{part}_seconds", 0.0) for r in rows)

    def write(self, folder: Path) -> None:
        self.seconds["total"] = time.monotonic() - self.started
        folder.mkdir(parents=True, exist_ok=True)
        (folder / TIMINGS).write_text(json.dumps(self.seconds, indent=2))
        log.info(
            "time: %s",
            ", ".join(
                f"{k} {v:.0f}" if k.endswith("_epochs") else f"{k} {v:.1f} s"
                for k, v in self.seconds.items()
            ),
        )


@dataclass
class FineTuned:
    """What fine-tuning gives the artifact and the report: the network, metrics.json's
    summary, the histories to write by name, and the network and labelled rows the report
    looks at."""

    network: Network
    summary: dict[str, Any]
    histories: dict[str, list[dict[str, float]]]
    report_on: tuple[Network, MappedRows]


def fine_tune(
    plan: JobPlan,
    model: TabTransformer,
    data: FitData,
    encoder_from: TabTransformer | None,
    device: torch.device,
    checkpointer: Checkpointer,
) -> FineTuned:
    """One model early-stopping on the validation rows, or cross-fitted models (cv_folds);
    `encoder_from`: the pretrained or base network every fold starts from (None: each fold
    is a fresh network)."""
    settings = plan.fit
    if encoder_from is None:  # a fresh network has no pretrained encoder to keep fixed
        settings = replace(settings, freeze_encoder_epochs=0)
    if settings.folds == 1:
        history, best_epoch = fit(model, data, settings, device, checkpointer)
        summary = final_scores(model, data, settings, device, history, best_epoch)
        return FineTuned(model, summary, {"training_history": history}, (model, data.valid))
    seed = plan.tables.seed

    def start(index: int) -> TabTransformer:
        """Cross-fitted model `index`: the first k from the encoder (if any), then fresh."""
        torch.manual_seed(seed + index)
        network = TabTransformer(model.config)
        if encoder_from is not None and index < settings.folds:
            network.load_state_dict(encoder_from.encoder_state(), strict=False)
        return network

    run = fit_folds(start, data, settings, device, checkpointer, plan.has_validation)
    histories = {"training_history": run.histories[0]}
    for fold, history in enumerate(run.histories[1:], start=2):
        histories[f"training_history_fold{fold}"] = history
    summary = run.summary(data.target.task)
    starts = "pretrained" if encoder_from is not None else "fresh"
    summary["fold_starts"] = "pretrained_and_fresh" if settings.fresh_folds else starts
    if plan.has_validation:
        report_on = (run.network, data.valid)
    else:
        report_on = (run.network.folds[0], run.held_out(0))
        summary["report_shows"] = "fold 1 on its held-out fold"
    return FineTuned(run.network, summary, histories, report_on)


def build_model(
    network: NetworkSettings, pre: TablePreprocessor, n_outputs: int, base: Artifact | None
) -> TabTransformer:
    """A fresh network of the planned shape for the table; from a base artifact, its
    embeddings and Transformer are reused (and their shape applies), while the prediction
    head's shape (ensemble_size, ensemble_head, mlp_hidden_cap) is this job's."""
    if base is None:
        config = network.config()
        edges = NUMERIC_EMBEDDINGS[config.numeric_embedding].needs_bin_edges
        columns = {
            "cardinalities": pre.cardinalities,
            "n_continuous": len(pre.numeric),
            "numeric_bin_edges": [c.bin_edges for c in pre.numeric] if edges else [],
        }
        config = replace(config, **columns, n_outputs=n_outputs)
        if network.numeric_flags == "skip" and config.numeric_tokens:
            flags = [i for i, column in enumerate(pre.numeric) if column.flag]
            if flags and len(flags) < config.n_tokens:  # some token must take the blocks
                log.info("%d flag column(s) skip the Transformer's blocks", len(flags))
                config = replace(config, numeric_skip=flags)
        return TabTransformer(config)
    head = {
        "n_outputs": n_outputs,
        "ensemble_size": network.ensemble_size,
        "ensemble_head": network.ensemble_head,
        "mlp_hidden_cap": network.mlp_hidden_cap,
    }
    config = TabTransformerConfig(**{**base.model.config.to_dict(), **head, "folds": 1})
    model = TabTransformer(config)
    source = base.model.folds[0] if isinstance(base.model, CrossFitted) else base.model
    reused = source.encoder_state()
    model.load_state_dict(reused, strict=False)
    log.info(
        "fine-tuning from the 'model' channel: reused %d tensors (embeddings and "
        "Transformer, whose architecture hyperparameters apply); a new head of %d member(s)",
        len(reused),
        config.ensemble_size,
    )
    return model

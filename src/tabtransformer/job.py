"""The training job, start to end, as one readable flow (`run`).

config -> tables -> preprocessing -> model -> pretraining? -> fine-tuning -> artifact -> report.
Reading and checking the channels is in `channels` and `tables`, the loops in `training`,
`pretraining` and `loop`; this module only puts them in order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tabtransformer import hyperparameters, metrics
from tabtransformer.artifacts import Artifact, read_base_artifact, save_artifact
from tabtransformer.channels import read_json_config, validate_channels
from tabtransformer.checkpoints import Checkpointer, StopFlag, fingerprint
from tabtransformer.distributed import World
from tabtransformer.host_store import MappedRows, scratch_folder
from tabtransformer.model import TabTransformer, TabTransformerConfig
from tabtransformer.paths import SageMakerPaths
from tabtransformer.preprocessing import TablePreprocessor
from tabtransformer.pretraining import PretrainSettings, pretrain_on_rows
from tabtransformer.reports import ReportInputs, write_history, write_training_report
from tabtransformer.tables import (
    Labelled,
    Tables,
    TableSettings,
    check_sharding,
    load_tables,
)
from tabtransformer.training import FitSettings, fit, validation_scores

log = logging.getLogger(__name__)


def run(paths: SageMakerPaths, world: World | None = None, scratch: Path | None = None) -> None:
    """Run one training job over the `/opt/ml` tree `paths` (as process `world.rank`);
    `scratch`: the host's folder for the encoded tables (None: a temporary one)."""
    started = time.monotonic()
    world = world or World()
    hp = hyperparameters.parse(read_json_config(paths.hyperparameters, {}))
    channels = validate_channels(paths)
    pretrain_only = hp["pretrain_only"] or "training" not in channels
    pretraining = PretrainSettings.from_hyperparameters(hp, channels, pretrain_only)
    table_settings = TableSettings.from_hyperparameters(hp)
    torch.manual_seed(hp["seed"])
    base = (
        read_base_artifact(paths.channel("model"), table_settings.header)
        if "model" in channels
        else None
    )

    shape = architecture(hp)
    numeric_bins = hp["numeric_bins"] if shape.numeric_embedding != "none" else 0
    check_sharding(paths, channels, world, pretraining.objective)
    with scratch_folder(scratch) as folder:
        tables = load_tables(
            paths,
            channels,
            table_settings,
            pretrain_only,
            base.preprocessor if base else None,
            (hp["continuous_bins"], numeric_bins),
            world,
            folder,
        )
        train_tables(paths, hp, tables, base, shape, pretraining, channels, started)


def train_tables(
    paths: SageMakerPaths,
    hp: Mapping[str, Any],
    tables: Tables,
    base: Artifact | None,
    shape: TabTransformerConfig,
    pretraining: PretrainSettings,
    channels: set[str],
    started: float,
) -> None:
    """Pretrain and/or fine-tune on the loaded tables, then write the artifact and report."""
    world, pre, table_settings = tables.world, tables.pre, TableSettings.from_hyperparameters(hp)
    labelled = tables.labelled
    n_outputs = labelled.target.n_outputs if labelled else 1
    if base is None:  # from a base artifact, its numeric embedding applies
        shape = with_numeric_embedding(shape, labelled.target.task if labelled else None)
    model = build_model(shape, pre, n_outputs, base)
    device = world.device()
    log.info(
        "model: %s parameters on %s", f"{sum(p.numel() for p in model.parameters()):,}", device
    )

    fit_settings = (
        FitSettings.from_hyperparameters(hp, labelled.target.task, "unlabeled" in channels)
        if labelled
        else None
    )
    semi_supervised = fit_settings is not None and fit_settings.semi_supervised != "none"
    # Every feature row (training, then unlabeled), encoded once for both uses.
    features = tables.features if pretraining.objective != "none" or semi_supervised else None

    target = labelled.target.to_dict() if labelled else None
    job_id = fingerprint(hp, {"features": pre.to_dict(), "target": target}, tables.n_rows_all_hosts)
    checkpointer = Checkpointer(paths.checkpoints, job_id, StopFlag().install(), world)
    if pretraining.objective != "none" and checkpointer.resumed_phase(model) != "finetune":
        history = pretrain_on_rows(model, pre, features, pretraining, device, checkpointer)
        if world.is_main:
            write_history(paths.output_data, "pretraining_history", history)
    pretrained = pretraining.objective if pretraining.objective != "none" else None

    if labelled is None:
        if world.is_main:
            artifact = Artifact(
                model.cpu(), pre, None, table_settings.header, {"pretrained": pretrained}
            )
            save_artifact(paths.model, artifact, hp)
            log.info("pretrained model written to %s", paths.model)
        return
    train, valid = labelled.train, labelled.valid
    unlabeled = features.subset(np.arange(len(train), len(features))) if semi_supervised else None
    history, best_epoch = fit(
        model, train, valid, labelled.target, fit_settings, device, checkpointer, world, unlabeled
    )
    if not world.is_main:
        return  # the other processes train; the first one reports and writes
    report = final_report(model, valid, labelled, device, history, best_epoch)
    report["pretrained"] = pretrained or ("from model channel" if base else None)
    write_history(paths.output_data, "training_history", history)
    artifact = Artifact(model.cpu(), pre, labelled.target, table_settings.header, report)
    save_artifact(paths.model, artifact, hp)
    log.info("model written to %s", paths.model)
    write_training_report(
        paths.output_data,
        hp["report"],
        ReportInputs(model, pre, labelled.target, valid, report, hp["eval_metric"], device),
        time.monotonic() - started,
    )


def architecture(hp: Mapping[str, Any]) -> TabTransformerConfig:
    """The network shape the hyperparameters ask for (the table's columns come later)."""
    return TabTransformerConfig(
        dim=hp["input_dim"],
        n_blocks=hp["n_blocks"],
        n_heads=hp["n_heads"],
        frac_shared_embed=hp["frac_shared_embed"],
        attn_dropout=hp["attn_dropout"],
        mlp_dropout=hp["mlp_dropout"],
        continuous_norm=hp["continuous_norm"],
        numeric_embedding=hp["numeric_embedding"],
        ensemble_size=hp["ensemble_size"],
        ensemble_head=hp["ensemble_head"],
        mlp_hidden_cap=hp["mlp_hidden_cap"],
    )


def with_numeric_embedding(shape: TabTransformerConfig, task: str | None) -> TabTransformerConfig:
    """numeric_embedding=auto made concrete: 'periodic' for binary classification, 'ple'
    otherwise (regression, multiclass, pretraining without labels), as measured in the
    accuracy benchmark (docs/benchmarks.md)."""
    if shape.numeric_embedding != "auto":
        return shape
    kind = "periodic" if task == "binary" else "ple"
    log.info("numeric_embedding=auto: %s numeric tokens for a %s task", kind, task or "unlabeled")
    return replace(shape, numeric_embedding=kind)


def build_model(
    shape: TabTransformerConfig, pre: TablePreprocessor, n_outputs: int, base: Artifact | None
) -> TabTransformer:
    """A fresh network of `shape` for the table; from a base artifact, its embeddings and
    Transformer are reused (and their shape applies), while the prediction head's shape
    (ensemble_size, ensemble_head, mlp_hidden_cap) comes from `shape`, this job's
    hyperparameters."""
    if base is None:
        columns = {
            "cardinalities": pre.cardinalities,
            "n_continuous": len(pre.numeric),
            "numeric_bin_edges": (
                [c.bin_edges for c in pre.numeric] if shape.numeric_embedding == "ple" else []
            ),
        }
        return TabTransformer(replace(shape, **columns, n_outputs=n_outputs))
    head = {
        "n_outputs": n_outputs,
        "ensemble_size": shape.ensemble_size,
        "ensemble_head": shape.ensemble_head,
        "mlp_hidden_cap": shape.mlp_hidden_cap,
    }
    config = TabTransformerConfig(**{**base.model.config.to_dict(), **head})
    model = TabTransformer(config)
    reused = {k: v for k, v in base.model.state_dict().items() if not k.startswith("mlp.")}
    model.load_state_dict(reused, strict=False)
    log.info(
        "fine-tuning from the 'model' channel: reused %d tensors (embeddings and "
        "Transformer, whose architecture hyperparameters apply); a new head of %d member(s)",
        len(reused),
        config.ensemble_size,
    )
    return model


def final_report(
    model: TabTransformer,
    valid: MappedRows,
    labelled: Labelled,
    device: torch.device,
    history: list[dict[str, float]],
    best_epoch: int,
) -> dict[str, Any]:
    """The validation scores of the kept weights (logged for SageMaker) and the run."""
    scores = validation_scores(model, valid, labelled.target, device)
    for metric in metrics.for_task(labelled.target.task):
        log.info("%s", metric.final_line(scores[metric.name]))
    return {
        "task": labelled.target.task,
        "validation": scores,
        "epochs_run": len(history),
        "best_epoch": best_epoch,
    }

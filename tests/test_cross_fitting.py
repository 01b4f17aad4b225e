"""Cross-fitted models (`cv_folds`): k fold models in one artifact, out-of-fold metrics,
resume mid-fold, several processes; through the real `train` entry point and server."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import FAST, TRAIN_ENTRY, Job, Server, free_port, make_table
from safetensors.torch import load_file

from tabtransformer import hyperparameters, load_model
from tabtransformer.crossfit import assign_folds
from tabtransformer.errors import UserError
from tabtransformer.inference import (
    contextual_embeddings,
    encode_table,
    predict_raw,
    to_prediction,
)
from tabtransformer.metrics import compute_all
from tabtransformer.model import CrossFitted
from tabtransformer.plan import (
    FEW_LABEL_FOLDS,
    FEW_LABELS,
    FEW_LABELS_TO_PRETRAIN,
    resolve_fold_starts,
    resolve_folds,
)
from tabtransformer.training import FEW_LABEL_PATIENCE, PATIENCE, FitSettings

# The report is off where it is not what a test looks at (it costs up to 20 s a job).
QUIET = {**FAST, "report": "false"}
CROSS_FIT = {**FAST, "cv_folds": "3", "n_epochs": "3", "patience": "50"}


def trained(job: Job) -> dict:
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    return {**json.loads((job.model / "metrics.json").read_text()), "log": result.stdout}


@pytest.fixture(scope="module")
def folded(tmp_path_factory) -> tuple[Job, dict]:
    job = Job(tmp_path_factory.mktemp("cross_fit") / "opt_ml")
    job.channel("training", make_table("binary", n=240))
    job.hyperparameters(CROSS_FIT)
    return job, trained(job)


@pytest.mark.slow
def test_k_fold_models_train_and_report_out_of_fold_metrics(folded):
    job, metrics = folded
    log = metrics["log"]
    assert "cross-fitting 3 models on 240 labelled rows (folds of 80/80/80 rows)" in log
    for i in (1, 2, 3):
        assert f"fold {i}/3: 160 training rows, 80 held out" in log
    assert metrics["folds"] == 3 and metrics["epochs_run"] == [3, 3, 3]
    assert metrics["validation_rows"] == "out-of-fold (240 rows, 3 folds)"
    assert "metrics={'auc': " in log and "validation_auc=" in log
    config = json.loads((job.model / "model_config.json").read_text())
    assert config["folds"] == 3
    for name in ("training_history", "training_history_fold2", "training_history_fold3"):
        assert (job.base / "output" / "data" / f"{name}.csv").is_file()


@pytest.mark.slow
def test_the_report_says_its_scores_are_out_of_fold_and_which_model_its_plots_show(folded):
    job, _ = folded
    page = (job.base / "output" / "data" / "report.html").read_text()
    assert "Validation scores on the out-of-fold predictions" in page
    assert "out-of-fold (240 rows, 3 folds)" in page
    assert "The plots below show fold 1 on its held-out fold (80 rows)" in page


@pytest.mark.slow
def test_out_of_fold_metrics_come_from_the_model_that_did_not_train_on_the_row(folded):
    """Recompute metrics.json's scores: each row predicted by the fold model that held it
    out (the seeded stratified assignment) gives exactly the logged out-of-fold scores."""
    job, metrics = folded
    predictor = load_model(job.model)
    table = make_table("binary", n=240)
    features, y = table.drop(columns="label"), (table["label"] == "yes").to_numpy().astype(int)
    folds = assign_folds(y, 3, seed=0, classify=True)
    data = encode_table(predictor.preprocessor, predictor.align(features))
    network = predictor.model
    assert isinstance(network, CrossFitted) and predictor.folds == 3
    raw = torch.cat([predict_raw(fold, data, predictor.device) for fold in network.folds], 1)
    e = network.config.ensemble_size
    own = np.stack([to_prediction(raw[:, i * e : (i + 1) * e], predictor.target) for i in range(3)])
    oof = own[folds, np.arange(len(y))]
    scores = compute_all("binary", y, oof)
    assert scores["auc"] == pytest.approx(metrics["validation"]["auc"], abs=1e-9)
    assert scores["log_loss"] == pytest.approx(metrics["validation"]["log_loss"], abs=1e-9)


@pytest.mark.slow
def test_one_artifact_predicts_the_mean_of_the_folds_in_one_call_and_serves_it(folded):
    job, _ = folded
    predictor = load_model(job.model)
    features = make_table("binary", n=240, seed=5).drop(columns="label").head(50)
    data = encode_table(predictor.preprocessor, predictor.align(features))
    network = predictor.model
    per_fold = [
        to_prediction(predict_raw(f, data, predictor.device), predictor.target)
        for f in network.folds
    ]
    mean = np.mean(per_fold, axis=0)
    assert np.allclose(predictor.predict_proba(features), mean, atol=1e-9)
    members = network.config.ensemble_size
    assert predict_raw(network, data, predictor.device).shape == (50, 3 * members, 2)
    with Server(job.base) as server:
        reply = server.post(features.to_csv(header=False, index=False))
        assert reply.status_code == 200, reply.text
        served = np.array(reply.json()["probabilities"])
    assert np.allclose(served, mean, atol=1e-9)


@pytest.mark.slow
def test_a_finished_job_restarted_writes_identical_bytes(folded):
    job, _ = folded
    before = (job.model / "model.safetensors").read_bytes()
    again = trained(job)
    assert "resuming cross-fitting: folds 1-2 finished" in again["log"]
    assert (job.model / "model.safetensors").read_bytes() == before


@pytest.mark.slow
def test_sigterm_mid_fold_resumes_that_fold(job: Job):
    job.channel("training", make_table("binary", n=900))
    hp = {**QUIET, "cv_folds": "3", "n_epochs": "4", "patience": "50", "batch_size": "16"}
    job.hyperparameters(hp)
    process = subprocess.Popen(
        [sys.executable, str(TRAIN_ENTRY)],
        env={**os.environ, "SAGEMAKER_BASE_DIR": str(job.base)},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lines, in_fold_two = [], False
    for line in process.stdout:  # wait for fold 2's first epoch (of 38 steps) to finish
        lines.append(line)
        in_fold_two = in_fold_two or "fold 2/3:" in line
        if in_fold_two and "epoch 1/4" in line:
            break
    process.send_signal(signal.SIGTERM)  # during fold 2's epoch 2, or later on a fast machine
    output = "".join(lines) + process.communicate(timeout=60)[0]
    assert process.returncode == 143, output
    assert "stopped by SIGTERM during finetune fold 2/3" in output
    resumed = trained(job)
    log = resumed["log"]
    assert "resuming cross-fitting: folds 1-1 finished" in log
    resumed_at = re.search(r"resuming finetune fold 2/3 from \S+ after epoch (\d+)", log)
    assert resumed_at and 1 <= int(resumed_at.group(1)) < 4, log  # fold 2, not finished
    assert "fold 1/3:" not in log and "fold 3/3:" in log
    assert resumed["folds"] == 3 and resumed["epochs_run"] == [4, 4, 4]


@pytest.mark.slow
def test_two_gloo_processes_train_each_fold(tmp_path):
    job = Job(tmp_path / "opt_ml")
    table = make_table("binary", n=300)
    job.channel("training", table)
    job.hyperparameters({**QUIET, "cv_folds": "2"})
    process = subprocess.Popen(
        [sys.executable, str(TRAIN_ENTRY)],
        env={
            **os.environ,
            "SAGEMAKER_BASE_DIR": str(job.base),
            "PROCESSES_PER_HOST": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output
    assert "process 0 of 2" in output and "fold 2/2: 150 training rows" in output
    predictor = load_model(job.model)
    assert predictor.folds == 2
    assert predictor.outputs(table.drop(columns="label")).shape == (300, 2)


@pytest.mark.slow
def test_a_validation_channel_is_the_final_check_of_the_folds_mean(job: Job):
    table = make_table("binary", n=300)
    job.channel("training", table.iloc[:200])
    job.channel("validation", table.iloc[200:])
    job.hyperparameters({**QUIET, "cv_folds": "2"})
    metrics = trained(job)
    assert metrics["validation_rows"] == "validation channel (the folds' mean)"
    assert "fold 1/2: 100 training rows, 100 held out" in metrics["log"]
    predictor = load_model(job.model)
    p = predictor.predict_proba(table.iloc[200:].drop(columns="label"))[:, 1]
    y = (table.iloc[200:]["label"] == "yes").to_numpy().astype(int)
    assert compute_all("binary", y, np.stack([1 - p, p], 1))["auc"] == pytest.approx(
        metrics["validation"]["auc"], abs=1e-9
    )


@pytest.mark.slow
def test_a_cross_fitted_artifact_fine_tunes_from_its_first_fold(folded, tmp_path):
    base_job, _ = folded
    job = Job(tmp_path / "opt_ml")
    job.channel("training", make_table("binary", n=240))
    job.hyperparameters({**QUIET, "cv_folds": "1"})
    shutil.copytree(base_job.model, job.paths.channel("model"))
    metrics = trained(job)
    assert "fine-tuning from the 'model' channel: reused" in metrics["log"]
    assert load_model(job.model).folds == 1


def test_cv_folds_auto_follows_the_number_of_labelled_rows():
    assert resolve_folds(0, 200, sharded=False) == FEW_LABEL_FOLDS
    assert resolve_folds(0, FEW_LABELS, sharded=False) == FEW_LABEL_FOLDS
    assert resolve_folds(0, FEW_LABELS + 1, sharded=False) == 1
    assert resolve_folds(0, 200, sharded=True) == 1
    assert resolve_folds(0, 6, sharded=False) == 1  # too few rows for 5 folds of two
    assert resolve_folds(3, 5000, sharded=False) == 3
    with pytest.raises(UserError, match="cv_folds=5 needs at least 10 labelled training rows"):
        resolve_folds(5, 9, sharded=False)
    with pytest.raises(UserError, match="ShardedByS3Key"):
        resolve_folds(2, 500, sharded=True)


@pytest.mark.parametrize(
    ("patience", "few_labels", "resolved"),
    [("0", True, FEW_LABEL_PATIENCE), ("0", False, PATIENCE), ("7", True, 7), ("7", False, 7)],
)
def test_patience_auto_waits_longer_with_few_labels(patience, few_labels, resolved):
    hp = hyperparameters.parse({"patience": patience})
    fit = FitSettings.from_hyperparameters(hp, "binary", few_labels=few_labels)
    assert fit.phase.patience == resolved
    assert (FEW_LABEL_PATIENCE, PATIENCE) == (15, 10)


@pytest.mark.parametrize(
    ("task", "few_labels", "watched"),
    [
        ("binary", False, "log_loss"),
        ("binary", True, "log_loss"),
        ("multiclass", False, "log_loss"),
        ("regression", False, "rmse"),
    ],
)
def test_eval_metric_auto_watches_the_log_loss_of_a_classifier(task, few_labels, watched):
    fit = FitSettings.from_hyperparameters(hyperparameters.parse({}), task, few_labels=few_labels)
    assert fit.eval_metric == watched
    chosen = hyperparameters.parse({"eval_metric": "auc"})
    assert FitSettings.from_hyperparameters(chosen, "binary").eval_metric == "auc"


@pytest.mark.parametrize(
    ("task", "given", "rate"),
    [
        ("binary", "0", 3e-4),
        ("multiclass", "0", 1e-3),
        ("regression", "0", 1e-3),
        ("regression", "0.02", 0.02),
    ],
)
def test_learning_rate_auto_follows_the_task(task, given, rate):
    fit = FitSettings.from_hyperparameters(hyperparameters.parse({"learning_rate": given}), task)
    assert fit.phase.learning_rate == rate
    assert fit.learning_rate(1.0) == pytest.approx(rate)  # the end of the warm-up epoch
    assert hyperparameters.PAPER_RECIPE["learning_rate"] == 3e-4  # as the paper network ran


def test_folds_are_a_stratified_partition():
    labels = np.array([0] * 30 + [1] * 9)
    folds = assign_folds(labels, 3, seed=1, classify=True)
    for i in range(3):
        assert (labels[folds == i] == 1).sum() == 3  # each fold holds its share of the class
    assert sorted(np.bincount(folds)) == [13, 13, 13]
    assert (assign_folds(labels, 3, seed=1, classify=True) == folds).all()  # seeded


@pytest.mark.slow
def test_a_default_job_with_few_labels_is_cross_fitted(tmp_path):
    job = Job(tmp_path / "opt_ml")
    job.channel("training", make_table("binary", n=120))
    job.hyperparameters({"n_epochs": "2", "n_blocks": "1", "report": "false"})
    metrics = trained(job)
    log = metrics["log"]
    assert "cv_folds=auto: 5 for 120 labelled training rows" in log
    assert "eval_metric=auto: log_loss for a binary task" in log
    assert "patience=auto: 15 for 120 labelled training rows" in log
    assert "batches of 16 rows (batch_size=256)" in log
    assert metrics["folds"] == 5 and load_model(job.model).folds == 5


@pytest.mark.slow
def test_embeddings_and_explanations_of_a_cross_fitted_model_are_the_folds_mean(folded):
    job, _ = folded
    predictor = load_model(job.model)
    features = make_table("binary", n=240, seed=6).drop(columns="label").head(20)
    data = encode_table(predictor.preprocessor, predictor.align(features))
    per_fold = [contextual_embeddings(f, data, predictor.device) for f in predictor.model.folds]
    embedded = predictor.embed(features)
    assert np.allclose(embedded.values, torch.stack(per_fold).mean(0).numpy(), atol=1e-6)
    attributions = predictor.explain(features)
    assert attributions.values.shape == (20, len(predictor.feature_names))
    assert np.isfinite(attributions.values).all()


# --- a pretrained encoder: k folds from it, k fresh ones on the same folds -----------------

PRETRAIN_FAST = {"pretrain_epochs": "2", "pretrain_patience": "2", "report": "false"}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> tuple[Job, dict, Job]:
    """A pretraining-only job, then a default few-label job fine-tuning its artifact from
    the 'model' channel with the encoder fixed (freeze_encoder_epochs), so that the folds
    which start from it keep it exactly."""
    root = tmp_path_factory.mktemp("mixed")
    table = make_table("binary", n=400)
    base = Job(root / "pretrain")
    base.channel("unlabeled", table.drop(columns="label"))
    base.hyperparameters({**QUIET, **PRETRAIN_FAST})
    assert base.train().returncode == 0
    job = Job(root / "finetune")
    job.channel("training", table.iloc[:100])
    shutil.copytree(base.model, job.paths.channel("model"))
    job.hyperparameters(
        {"n_epochs": "2", "report": "false", "freeze_encoder_epochs": "100", "cv_folds": "0"}
    )
    return job, trained(job), base


@pytest.mark.slow
def test_folds_from_a_pretrained_encoder_are_joined_by_as_many_fresh_ones(mixed):
    job, metrics, base = mixed
    log = metrics["log"]
    assert "fold_starts=auto: pretrained_and_fresh (5 folds from the pretrained encoder" in log
    assert "cross-fitting 10 models on 100 labelled rows" in log
    assert "models 1-5 from the pretrained encoder, 6-10 fresh" in log
    assert "fold 2/5, fresh (model 7/10): 80 training rows, 20 held out" in log
    assert metrics["folds"] == 5 and metrics["models"] == 10
    assert metrics["fold_starts"] == "pretrained_and_fresh"
    network = load_model(job.model).model
    assert isinstance(network, CrossFitted) and len(network.folds) == 10
    pretrained = load_file(base.model / "model.safetensors")
    for m, fold in enumerate(network.folds):
        encoder = fold.encoder_state()
        kept = all(torch.equal(value, pretrained[name]) for name, value in encoder.items())
        assert kept == (m < 5), f"model {m + 1}: encoder kept {kept}"


@pytest.mark.slow
def test_with_fresh_folds_each_rows_out_of_fold_score_is_the_mean_of_its_two_models(mixed):
    job, metrics, _ = mixed
    predictor = load_model(job.model)
    table = make_table("binary", n=400).iloc[:100]
    features, y = table.drop(columns="label"), (table["label"] == "yes").to_numpy().astype(int)
    folds = assign_folds(y, 5, seed=0, classify=True)
    data = encode_table(predictor.preprocessor, predictor.align(features))
    models = predictor.model.folds
    own = []
    for i in range(5):  # fold i is held out by model i and by fresh model 5 + i
        raw = torch.cat([predict_raw(models[m], data, predictor.device) for m in (i, 5 + i)], 1)
        own.append(to_prediction(raw, predictor.target))
    oof = np.stack(own)[folds, np.arange(len(y))]
    scores = compute_all("binary", y, oof)
    assert scores["log_loss"] == pytest.approx(metrics["validation"]["log_loss"], abs=1e-9)
    assert scores["auc"] == pytest.approx(metrics["validation"]["auc"], abs=1e-9)


def test_fold_starts_auto_mixes_only_cross_fitted_models_from_a_pretrained_encoder():
    assert resolve_fold_starts("auto", 5, pretrained=True)
    assert not resolve_fold_starts("auto", 1, pretrained=True)
    assert not resolve_fold_starts("auto", 5, pretrained=False)
    assert not resolve_fold_starts("pretrained", 5, pretrained=True)
    with pytest.raises(UserError, match="needs cv_folds >= 2"):
        resolve_fold_starts("pretrained_and_fresh", 1, pretrained=True)
    with pytest.raises(UserError, match="and no pretrained encoder"):
        resolve_fold_starts("pretrained_and_fresh", 5, pretrained=False)
    assert FEW_LABELS_TO_PRETRAIN < FEW_LABELS  # a job that pretrains by default cross-fits

"""Unlabeled rows while fine-tuning (semi_supervised = entropy | pseudo_label)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST, Job, make_table

from tabtransformer import hyperparameters
from tabtransformer.distributed import World
from tabtransformer.errors import UserError
from tabtransformer.inference import encode_table, predict_raw
from tabtransformer.model import TabTransformer, TabTransformerConfig
from tabtransformer.preprocessing import TablePreprocessor, TargetEncoder
from tabtransformer.training import (
    FitData,
    FitSettings,
    fit,
    unlabeled_batches,
    unlabeled_loss,
)


def test_entropy_loss_is_the_mean_entropy_of_each_members_prediction():
    uniform = torch.zeros(4, 2, 3)  # 4 rows, 2 members, 3 classes
    assert math.isclose(unlabeled_loss("entropy", uniform, 0.9).item(), math.log(3), rel_tol=1e-6)
    sure = torch.tensor([[[20.0, 0.0, 0.0]]]).expand(4, 2, 3)
    assert unlabeled_loss("entropy", sure, 0.9).item() < 1e-6


def test_pseudo_labels_count_confident_rows_only_and_carry_no_gradient():
    out = torch.tensor([[[4.0, 0.0]], [[0.2, 0.0]], [[0.0, 5.0]]], requires_grad=True)
    loss = unlabeled_loss("pseudo_label", out, threshold=0.9)
    loss.backward()
    # Rows 0 and 2 are confident (p = 0.982, 0.993): cross-entropy toward their own class,
    # averaged over all 3 rows; row 1 (p = 0.55) adds nothing and gets no gradient.
    log_p = out.detach().log_softmax(-1)
    expected = -(log_p[0, 0, 0] + log_p[2, 0, 1]) / 3
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-6)
    assert out.grad[1].abs().sum() == 0
    # The gradient of a fixed target: softmax - one-hot (a target that moved with the
    # logits would give a different one).
    p = out.detach().softmax(-1)
    assert torch.allclose(out.grad[0, 0], (p[0, 0] - torch.tensor([1.0, 0.0])) / 3)


def test_pseudo_labels_follow_the_ensemble_mean():
    # Member 1 is sure of class 0, member 2 unsure: the mean (0.75) is below 0.9.
    out = torch.tensor([[[10.0, 0.0], [0.0, 0.0]]])
    assert unlabeled_loss("pseudo_label", out, threshold=0.9).item() == 0
    assert unlabeled_loss("pseudo_label", out, threshold=0.7).item() > 0


def test_each_process_draws_its_own_unlabeled_rows():
    draws = [
        unlabeled_batches(1000, 3, 16, torch.Generator().manual_seed(0), World(rank, 2))
        for rank in (0, 1)
    ]
    assert draws[0].shape == (3, 16) and int(draws[0].max()) < 1000
    assert not torch.equal(draws[0], draws[1])


def test_semi_supervised_needs_a_classifier_and_unlabeled_rows():
    hp = hyperparameters.parse({"semi_supervised": "entropy"})
    with pytest.raises(UserError, match=r"classification only.*semi_supervised=none"):
        FitSettings.from_hyperparameters(hp, "regression", has_unlabeled=True)
    with pytest.raises(UserError, match="no 'unlabeled' channel"):
        FitSettings.from_hyperparameters(hp, "binary", has_unlabeled=False)
    settings = FitSettings.from_hyperparameters(hp, "multiclass", has_unlabeled=True)
    assert settings.semi_supervised == "entropy" and settings.semi_supervised_weight == 0.5


def mean_entropy(model: TabTransformer, rows) -> float:
    p = predict_raw(model, rows, torch.device("cpu")).softmax(-1).mean(1)
    return float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean())


def test_entropy_regularisation_makes_predictions_on_unlabeled_rows_more_confident():
    """The unlabeled rows really enter the loss: the same fit with entropy minimisation
    ends less uncertain on them than without."""
    table = make_table("binary", n=2000)
    features, target = table.drop(columns="label"), table["label"]
    pre = TablePreprocessor.fit(features, None)
    encoder = TargetEncoder.fit(target, "auto", 20)
    labelled = encode_table(pre, features.iloc[:60], encoder.encode(target.iloc[:60]))
    valid = encode_table(pre, features.iloc[60:100], encoder.encode(target.iloc[60:100]))
    unlabeled = encode_table(pre, features.iloc[100:])
    hp = hyperparameters.parse(
        {
            **hyperparameters.PAPER_RECIPE,  # the mechanism, without schedule or clipping
            **FAST,
            "n_epochs": "15",
            "patience": "15",
            "batch_size": "16",
            "learning_rate": "0.002",
            "semi_supervised_weight": "1",
        }
    )
    entropies = {}
    for mode in ("none", "entropy"):
        torch.manual_seed(0)
        config = TabTransformerConfig(pre.cardinalities, len(pre.numeric), 2, dim=8, n_blocks=1)
        model = TabTransformer(config)
        settings = FitSettings.from_hyperparameters(
            {**hp, "semi_supervised": mode}, "binary", has_unlabeled=True
        )
        data = FitData(labelled, valid, encoder, unlabeled)
        history, _ = fit(model, data, settings, torch.device("cpu"))
        assert len(history) == 15  # the same number of epochs for both
        entropies[mode] = mean_entropy(model, unlabeled)
    assert entropies["entropy"] < 0.8 * entropies["none"], entropies


# --- jobs through the real entry point ------------------------------------------------


def run_job(job: Job, hp: dict, task: str = "binary") -> tuple[int, str]:
    table = make_table(task, n=400)
    job.channel("training", table.iloc[:120])
    job.channel("unlabeled", table.iloc[120:].drop(columns="label"))
    job.hyperparameters(hp)
    result = job.train()
    return result.returncode, result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode, extra",
    [
        ("entropy", {"pretrain_objective": "none"}),
        ("pseudo_label", {"pretrain_objective": "none", "pseudo_label_threshold": "0.6"}),
        (
            "pseudo_label",
            {
                "pretrain_objective": "rtd",
                "pretrain_epochs": "2",
                "numeric_embedding": "ple",
                "ensemble_size": "2",
            },
        ),
    ],
    ids=["entropy", "pseudo_label", "pseudo_label_after_rtd_with_ensemble"],
)
def test_each_semi_supervised_mode_trains_through_the_job(job: Job, mode, extra):
    code, log = run_job(job, {**FAST, "semi_supervised": mode, **extra})
    assert code == 0, log
    assert f"fine-tuning with semi_supervised={mode} on 280 unlabeled rows" in log
    assert "metrics={'f1':" in log
    report = json.loads((job.model / "metrics.json").read_text())
    assert report["validation"]["auc"] >= 0.5
    history = pd.read_csv(job.base / "output" / "data" / "training_history.csv")
    assert np.isfinite(history["train_loss"]).all()
    if "pretrain_epochs" in extra:
        assert report["pretrained"] == "rtd" and "pretrain rtd epoch 2/2" in log


@pytest.mark.slow
def test_semi_supervised_regression_is_a_user_error(job: Job):
    code, _ = run_job(job, {**FAST, "semi_supervised": "entropy"}, task="regression")
    assert code == 1
    assert "semi_supervised=entropy applies to classification only" in job.failure

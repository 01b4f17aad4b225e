"""The shared epoch loop in process: best weights, patience, resume, the non-finite check."""

from __future__ import annotations

import logging

import pytest
import torch

from tabtransformer.checkpoints import Checkpointer
from tabtransformer.errors import UserError
from tabtransformer.loop import LoopSettings, run_epochs


def run(scores: list[float], losses: list[float] | None = None, tmp_path=None, **settings):
    """Run the loop on a one-weight model whose weight is the epoch number."""
    model = torch.nn.Linear(1, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpoint = Checkpointer(tmp_path, "job").phase("finetune", model, optimizer, [])
    losses = losses or [1.0] * len(scores)
    epoch = iter(range(1, len(scores) + 1))

    def train_epoch():
        number = next(epoch)
        with torch.no_grad():
            model.weight.fill_(number)
        yield losses[number - 1], 10

    values = iter(scores)
    defaults = {"n_epochs": len(scores), "patience": 99, "watch": "auc", "higher_is_better": True}
    loop = run_epochs(
        LoopSettings(**{**defaults, **settings}),
        checkpoint,
        checkpoint.restore(),
        model,
        train_epoch,
        lambda: {"loss": 0.5, "auc": next(values)},
    )
    return loop, model


def test_best_weights_are_restored_and_nan_never_wins():
    loop, model = run([0.6, 0.8, float("nan"), 0.7])
    assert loop.best_epoch == 2 and model.weight.item() == 2.0
    assert [h["validation_auc"] for h in loop.history][:2] == [0.6, 0.8]


def test_lower_is_better_and_patience_stops_early():
    loop, _ = run([0.5, 0.4, 0.45, 0.46, 0.3], watch="auc", higher_is_better=False, patience=2)
    assert loop.best_epoch == 2 and loop.epoch == 4 and len(loop.history) == 4


def test_log_line_format(caplog):
    with caplog.at_level(logging.INFO, logger="tabtransformer.loop"):
        run([0.6, 0.7], log_prefix="pretrain rtd ", loss_name="pretrain_loss")
    line = caplog.messages[0]
    assert "validation_" not in caplog.messages[-1]  # SageMaker's regexes read epoch lines only
    assert line.startswith("pretrain rtd epoch 1/2 pretrain_loss=1 validation_loss=0.5 ")
    assert "validation_auc=0.6 rows/s=" in line and "time_left<=" in line
    assert line.endswith("best_auc=0.6@1")


def test_a_non_finite_loss_is_a_user_error_naming_the_learning_rate(tmp_path):
    named = r"became nan in epoch 2.*lower pretrain_learning_rate \(this run used 0\.002\)\."
    with pytest.raises(UserError, match=named):
        run(
            [0.6, 0.7],
            [1.0, float("nan")],
            tmp_path,
            learning_rate_name="pretrain_learning_rate",
            learning_rate=0.002,
        )
    # The diverged epoch is not saved: a restart resumes after epoch 1.
    loop, _ = run([0.6, 0.7], tmp_path=tmp_path, n_epochs=1)
    assert loop.epoch == 1 and len(loop.history) == 1


def test_resume_continues_after_the_saved_epoch(tmp_path):
    run([0.6, 0.7], tmp_path=tmp_path)
    loop, _ = run([0.9, 0.95], tmp_path=tmp_path, n_epochs=4)
    assert [h["epoch"] for h in loop.history] == [1, 2, 3, 4]
    assert loop.best_epoch == 4


def test_an_early_stopped_loop_is_finished_and_a_restart_trains_no_further(tmp_path):
    first, _ = run([0.9, 0.5, 0.5], tmp_path=tmp_path, patience=1, n_epochs=40)
    assert first.finished and first.epoch == 2
    again, model = run([0.99] * 5, tmp_path=tmp_path, patience=1, n_epochs=40)
    assert again.epoch == 2 and again.best_epoch == 1 and model.weight.item() == 1.0

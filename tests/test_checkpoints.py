"""Checkpoints in process: what a saved phase restores, which job it belongs to, SIGTERM."""

from __future__ import annotations

import pytest
import torch

from tabtransformer.checkpoints import (
    FILE,
    Checkpointer,
    LoopState,
    StopFlag,
    Stopped,
    fingerprint,
)


def parts(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return model, optimizer, torch.Generator().manual_seed(seed)


def test_a_saved_phase_restores_weights_optimizer_generator_and_loop(tmp_path):
    model, optimizer, generator = parts(0)
    saver = Checkpointer(tmp_path, "job-a").phase("finetune", model, optimizer, [generator])
    loop = LoopState(epoch=3, best=0.9, best_epoch=2, history=[{"epoch": 1, "loss": 0.5}])
    saver.save(loop)
    expected_draw = torch.rand(4, generator=generator)

    model2, optimizer2, generator2 = parts(1)
    checkpointer = Checkpointer(tmp_path, "job-a")
    restored = checkpointer.phase("finetune", model2, optimizer2, [generator2]).restore()
    assert restored == loop
    assert torch.equal(model2.weight, model.weight)
    assert optimizer2.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]
    assert torch.equal(torch.rand(4, generator=generator2), expected_draw)
    assert checkpointer.resumed_phase() == "finetune"


def test_a_checkpoint_of_another_job_or_phase_starts_afresh(tmp_path):
    model, optimizer, generator = parts()
    Checkpointer(tmp_path, "job-a").phase("pretrain", model, optimizer, [generator]).save(
        LoopState(epoch=2)
    )
    other_job = Checkpointer(tmp_path, "job-b")
    assert other_job.resumed_phase() is None
    assert other_job.phase("pretrain", model, optimizer, [generator]).restore() == LoopState()
    same_job = Checkpointer(tmp_path, "job-a")
    assert same_job.resumed_phase() == "pretrain"
    assert same_job.phase("finetune", model, optimizer, [generator]).restore() == LoopState()


def test_without_a_folder_nothing_is_written(tmp_path):
    model, optimizer, generator = parts()
    Checkpointer(None).phase("finetune", model, optimizer, [generator]).save(LoopState(epoch=1))
    assert not list(tmp_path.iterdir())


def test_sigterm_flag_saves_and_stops(tmp_path):
    model, optimizer, _ = parts()
    stop = StopFlag()
    checkpoint = Checkpointer(tmp_path, "job", stop).phase("finetune", model, optimizer, [])
    checkpoint.stop_if_requested(LoopState(epoch=1))  # no SIGTERM: goes on
    assert not (tmp_path / FILE).exists()
    stop.requested = True
    with pytest.raises(Stopped, match="during finetune epoch 3"):
        checkpoint.stop_if_requested(LoopState(epoch=2))
    assert (tmp_path / FILE).is_file()


def test_fingerprint_ignores_epochs_and_patience_only():
    hp = {"n_epochs": 5, "patience": 3, "learning_rate": 0.001, "pretrain_epochs": 2}
    schema = {"features": ["a"]}
    same = fingerprint(hp, schema, 100)
    assert fingerprint(
        {**hp, "n_epochs": 50, "patience": 9, "pretrain_epochs": 7}, schema, 100
    ) == (same)
    assert fingerprint({**hp, "learning_rate": 0.01}, schema, 100) != same
    assert fingerprint(hp, {"features": ["b"]}, 100) != same
    assert fingerprint(hp, schema, 101) != same


def save_epochs(folder, epochs: int) -> None:
    model, optimizer, generator = parts()
    checkpoint = Checkpointer(folder, "job").phase("finetune", model, optimizer, [generator])
    for epoch in range(1, epochs + 1):
        checkpoint.save(LoopState(epoch=epoch))


def restored_epoch(folder) -> int:
    model, optimizer, generator = parts()
    return (
        Checkpointer(folder, "job").phase("finetune", model, optimizer, [generator]).restore().epoch
    )


DAMAGES = {
    "random bytes": lambda data: bytes(range(256)) * 4,
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "not a dict": lambda data: None,
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_an_unreadable_checkpoint_is_set_aside_and_the_previous_one_used(tmp_path, damage):
    save_epochs(tmp_path, 2)
    newest = tmp_path / FILE
    if damage == "not a dict":
        torch.save([1, 2, 3], newest)
    else:
        newest.write_bytes(DAMAGES[damage](newest.read_bytes()))
    assert restored_epoch(tmp_path) == 1  # from checkpoint.previous.pt
    assert not newest.exists()
    assert len(list(tmp_path.glob(f"{FILE}.damaged-*"))) == 1  # renamed, not deleted


def test_with_no_readable_checkpoint_the_job_starts_afresh(tmp_path):
    (tmp_path / FILE).write_bytes(b"\x80garbage")
    assert restored_epoch(tmp_path) == 0

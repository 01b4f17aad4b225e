"""What the model learned: contextual embeddings out, explanations, the training report,
and the paper's MLP baseline (n_blocks=0)."""

from __future__ import annotations

import json
import logging
import re
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST, Job, Server, make_table
from PIL import Image

from tabtransformer import job as training_job
from tabtransformer import load_model, reports
from tabtransformer.errors import UserError
from tabtransformer.inference import encode_table
from tabtransformer.paths import SageMakerPaths

TABLE = make_table("binary", n=240)
FEATURES = TABLE.drop(columns="label")


@pytest.fixture(autouse=True)
def keep_sigterm_handler():
    """`job.run` installs its SIGTERM flag; the test process keeps its own handler."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def train_in_process(job: Job, frame: pd.DataFrame, **hyperparameters: str) -> Path:
    """Train over `job`'s tree through `job.run` (in this process); the model folder."""
    job.channel("training", frame, header=True)
    job.hyperparameters({**FAST, "target_column": "label", **hyperparameters})
    training_job.run(SageMakerPaths(job.base))
    return job.model


@pytest.fixture(scope="module")
def token_model(tmp_path_factory) -> Path:
    """A binary model whose numeric columns are tokens through every block (PLE), 2 blocks,
    one head."""
    job = Job(tmp_path_factory.mktemp("tokens") / "opt_ml")
    settings = {"numeric_embedding": "ple", "numeric_attention": "all", "n_blocks": "2"}
    return train_in_process(job, TABLE, ensemble_size="1", report="false", **settings)


# --- embeddings -------------------------------------------------------------------------


def test_embeddings_have_the_documented_shape_and_token_columns(token_model):
    predictor = load_model(token_model)
    embeddings = predictor.embed(FEATURES.head(7))
    assert embeddings.values.shape == (7, 4, 32)  # rows, token columns, d
    assert embeddings.columns == ["color", "shape", "size", "weight"]  # categorical first
    assert embeddings.layer == 2
    assert predictor.embed(FEATURES.head(3), layer=0).layer == 0
    assert predictor.embed(FEATURES.head(3), layer=-3).layer == 0
    assert predictor.embed(FEATURES.head(3), layer=1).values.shape == (3, 4, 32)


def test_embeddings_equal_the_models_internal_values(token_model):
    predictor = load_model(token_model)
    rows = FEATURES.head(9)
    model = predictor.model
    data = encode_table(predictor.preprocessor, rows)
    with torch.no_grad():
        x = torch.cat([model.embed(data.codes), model.embed_numbers(data.numbers)], dim=1)
        expected = [x]
        for block in model.blocks:  # blocks run token-major: (tokens, B, d)
            x = block(x.transpose(0, 1)).transpose(0, 1)
            expected.append(x)
        last = model.ln_f(x)
        # the last layer is exactly what the MLP head reads
        head = model.mlp(last.flatten(1))
        assert torch.allclose(head, model(data.codes, data.numbers)[:, 0], atol=1e-5)
    for layer in (0, 1):
        got = predictor.embed(rows, layer=layer).values
        assert np.allclose(got, expected[layer].numpy(), atol=1e-5)
    assert np.allclose(predictor.embed(rows).values, last.numpy(), atol=1e-5)
    assert not np.allclose(predictor.embed(rows, 0).values, predictor.embed(rows).values)


@pytest.mark.parametrize("layer", [3, -4, 100])
def test_an_out_of_range_layer_is_a_user_error_naming_the_range(token_model, layer):
    with pytest.raises(UserError, match=r"layers 0 .* to 2"):
        load_model(token_model).embed(FEATURES.head(2), layer=layer)


# --- explanations -----------------------------------------------------------------------


def one_column_table(kind: str, n: int = 600, seed: int = 1) -> pd.DataFrame:
    """The target depends on column 'key' only; 'color', 'size' and 'noise' are noise. 5% of
    the cells are blank, so that the missing embeddings are learned too."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "color": rng.choice(["red", "green", "blue"], n),
            "key": rng.choice(["a", "b", "c", "d"], n) if kind == "binary" else rng.normal(0, 1, n),
            "size": rng.normal(10, 3, n).round(2),
            "noise": rng.choice(["x", "y", "z"], n),
        }
    )
    if kind == "binary":
        label = np.where(frame["key"].isin(["a", "b"]), "yes", "no")
    else:
        label = (3 * frame["key"] + rng.normal(0, 0.05, n)).round(4)
    frame = frame.astype(object).mask(rng.random(frame.shape) < 0.05)  # the model sees missing
    return pd.DataFrame({"label": label, **frame})


@pytest.mark.parametrize(
    "kind, numeric_embedding",
    [("binary", "none"), ("regression", "none"), ("regression", "periodic")],
)
def test_attributions_of_the_column_the_target_depends_on_dominate(
    tmp_path, kind, numeric_embedding
):
    table = one_column_table(kind)
    model = train_in_process(
        Job(tmp_path / "opt_ml"),
        table,
        n_epochs="30",
        patience="30",
        numeric_embedding=numeric_embedding,
        report="false",
    )
    predictor = load_model(model)
    rows = table.drop(columns="label").head(200)
    attributions = predictor.explain(rows)
    assert attributions.columns == ["color", "key", "size", "noise"]
    assert attributions.values.shape == (200, 4)
    strength = pd.Series(np.abs(attributions.values).mean(axis=0), index=attributions.columns)
    assert strength["key"] > 3 * strength.drop("key").max(), strength


def test_a_column_that_is_already_missing_has_no_attribution(token_model):
    predictor = load_model(token_model)
    rows = FEATURES.head(4).astype(object)
    rows.loc[:, "color"] = None
    rows.loc[:, "size"] = None
    attributions = pd.DataFrame(predictor.explain(rows).values, columns=FEATURES.columns)
    assert np.allclose(attributions[["color", "size"]], 0.0, atol=1e-5)
    assert not np.allclose(attributions["shape"], 0.0, atol=1e-5)


# --- the training report ----------------------------------------------------------------


def png_sources(page: str) -> list[str]:
    return re.findall(r'src="([^"]*)"', page)


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_the_report_is_written_self_contained_with_valid_pngs(tmp_path, task, caplog):
    job = Job(tmp_path / "opt_ml")
    with caplog.at_level(logging.INFO, logger="tabtransformer.reports"):
        train_in_process(job, make_table(task, n=300))
    folder = job.base / "output" / "data"
    plots = ({"classification.png"} if task == "binary" else {"predicted_vs_actual.png"}) | {
        "training_history.png",
        "permutation_importance.png",
        "tsne_embeddings.png",
    }
    assert plots <= {p.name for p in folder.glob("*.png")}
    for name in plots:
        with Image.open(folder / name) as image:
            image.verify()
    page = (folder / reports.REPORT).read_text()
    sources = png_sources(page)
    assert len(sources) == len(plots)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "href=" not in page and "http" not in page and "url(" not in page
    assert "Failed" not in page and "Skipped" not in page
    assert re.search(r"training report: .*report\.html written in [0-9.]+ s", caplog.text)
    importance = pd.read_csv(folder / "permutation_importance.csv", index_col=0)
    assert set(importance.index) == set(FEATURES.columns)


def test_report_false_writes_no_report(tmp_path):
    job = Job(tmp_path / "opt_ml")
    train_in_process(job, TABLE, report="false")
    folder = job.base / "output" / "data"
    assert (folder / "training_history.csv").is_file()  # the histories, without their plots
    assert not (folder / "training_history.png").exists()
    assert not (folder / reports.REPORT).exists()
    assert not (folder / "tsne_embeddings.png").exists()


def test_a_report_failure_is_a_warning_and_the_job_succeeds(tmp_path, monkeypatch, caplog):
    def broken(*args: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(reports, "_write_report", broken)
    job = Job(tmp_path / "opt_ml")
    with caplog.at_level(logging.WARNING):
        train_in_process(job, TABLE)
    assert (job.model / "model.safetensors").is_file()
    assert not (job.base / "output" / "failure").exists()
    assert "training report not written: RuntimeError: disk on fire" in caplog.text
    load_model(job.model).outputs(FEATURES.head(2))


def test_a_failed_plot_leaves_the_rest_of_the_report(tmp_path, monkeypatch, caplog):
    def broken(*args: object) -> None:
        raise ValueError("no t-SNE today")

    monkeypatch.setattr(reports, "_tsne", broken)
    job = Job(tmp_path / "opt_ml")
    with caplog.at_level(logging.WARNING):
        train_in_process(job, TABLE)
    page = (job.base / "output" / "data" / reports.REPORT).read_text()
    assert "Failed: ValueError: no t-SNE today" in page
    assert len(png_sources(page)) == 3  # learning curves, classification, importance
    assert "t-SNE) failed: ValueError" in caplog.text


def test_a_report_past_its_time_budget_skips_the_remaining_sections(tmp_path, monkeypatch):
    monkeypatch.setattr(reports, "MIN_BUDGET_SECONDS", 0.0)
    monkeypatch.setattr(reports, "BUDGET_SHARE", 0.0)
    job = Job(tmp_path / "opt_ml")
    train_in_process(job, TABLE)
    page = (job.base / "output" / "data" / reports.REPORT).read_text()
    assert page.count("Skipped: the report&#x27;s time budget is spent.") == 3
    assert "validation auc" in page  # the metrics table and learning curves are always there


# --- over the real server ---------------------------------------------------------------

PAYLOAD_MB = 0.01  # 10,485 bytes: 13 rows of embeddings (2 token columns x 32 x 12 bytes)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The real `train` (subprocess) and `serve` over one tree, a small payload limit."""
    job = Job(tmp_path_factory.mktemp("served") / "opt_ml")
    job.channel("training", TABLE, header=True)
    # numeric columns as scalars: the two categorical columns are the token columns
    settings = {"target_column": "label", "report": "false", "numeric_embedding": "none"}
    job.hyperparameters({**FAST, **settings})
    assert job.train().returncode == 0
    server = Server(job.base, SAGEMAKER_MAX_PAYLOAD_IN_MB=str(PAYLOAD_MB))
    yield job, server
    server.stop()


def csv_body(frame: pd.DataFrame) -> str:
    return frame.to_csv(header=False, index=False)


@pytest.mark.slow
@pytest.mark.parametrize("content_type", ["text/csv", "application/json"])
def test_embeddings_and_attributions_over_the_server(served, content_type):
    job, server = served
    rows = FEATURES.head(5)
    body = (
        csv_body(rows)
        if content_type == "text/csv"
        else json.dumps({"instances": json.loads(rows.to_json(orient="records"))})
    )
    reply = server.post(body, content_type, accept="application/json;embeddings;explain")
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    predictor = load_model(job.model)
    assert np.allclose(answer["probabilities"], predictor.outputs(rows), atol=1e-9)
    assert answer["columns"] == ["color", "shape"]
    assert np.array(answer["embeddings"]).shape == (5, 2, 32)
    assert np.allclose(answer["embeddings"], predictor.embed(rows).values, atol=2e-6)
    assert [list(a) for a in answer["attributions"]] == [list(FEATURES.columns)] * 5
    expected = predictor.explain(rows).values
    assert np.allclose([list(a.values()) for a in answer["attributions"]], expected, atol=1e-6)


@pytest.mark.slow
def test_jsonlines_answers_carry_each_rows_embeddings(served):
    _, server = served
    reply = server.post(
        csv_body(FEATURES.head(3)), accept="application/jsonlines;embeddings;explain"
    )
    assert reply.status_code == 200, reply.text
    lines = [json.loads(line) for line in reply.text.splitlines()]
    assert len(lines) == 3
    assert np.array(lines[0]["embeddings"]).shape == (2, 32)
    assert lines[0]["columns"] == ["color", "shape"]
    assert set(lines[0]["attributions"]) == set(FEATURES.columns)


@pytest.mark.slow
@pytest.mark.parametrize("accept", ["text/csv;explain", "text/csv;embeddings"])
def test_csv_answers_with_embeddings_or_explain_are_406(served, accept):
    _, server = served
    reply = server.post(csv_body(FEATURES.head(2)), accept=accept)
    assert reply.status_code == 406
    assert "application/json;explain" in reply.json()["error"]


@pytest.mark.slow
def test_an_embedding_answer_over_the_payload_limit_is_413_naming_the_rows_that_fit(served):
    _, server = served
    body = csv_body(FEATURES.head(20))
    assert len(body) < PAYLOAD_MB * 2**20  # the request itself fits
    assert server.post(body).status_code == 200
    reply = server.post(body, accept="application/json;embeddings")
    assert reply.status_code == 413
    assert "send at most 13 rows" in reply.json()["error"]
    fits = server.post(csv_body(FEATURES.head(13)), accept="application/json;embeddings")
    assert fits.status_code == 200, fits.text


@pytest.mark.slow
def test_batch_transform_answers_one_line_per_record_with_embeddings(served):
    job, _ = served
    server = Server(job.base, SAGEMAKER_BATCH="true")
    try:
        rows = csv_body(FEATURES.head(3)).splitlines()
        body = "\n".join([rows[0], "", rows[1], rows[2]]) + "\n"
        reply = server.post(body, accept="application/json;embeddings;explain")
    finally:
        server.stop()
    assert reply.status_code == 200, reply.text
    lines = [json.loads(line) for line in reply.text.splitlines()]
    assert len(lines) == 4
    assert lines[1] == {"error": "blank record"}
    for line in (lines[0], lines[2], lines[3]):
        assert np.array(line["embeddings"]).shape == (2, 32)
        assert set(line["attributions"]) == set(FEATURES.columns)


# --- the paper's MLP baseline -----------------------------------------------------------


@pytest.mark.slow
def test_n_blocks_0_trains_and_serves_with_plain_embeddings(tmp_path):
    job = Job(tmp_path / "opt_ml")
    job.channel("training", TABLE, header=True)
    job.hyperparameters({**FAST, "target_column": "label", "n_blocks": "0"})
    result = job.train()
    assert result.returncode == 0, result.stderr
    predictor = load_model(job.model)
    assert predictor.model.config.n_blocks == 0
    rows = FEATURES.head(4)
    assert np.array_equal(predictor.embed(rows, 0).values, predictor.embed(rows).values)
    assert (job.base / "output" / "data" / reports.REPORT).is_file()
    server = Server(job.base)  # validates the artifact at start-up
    try:
        reply = server.post(csv_body(rows), accept="application/json;embeddings")
    finally:
        server.stop()
    assert reply.status_code == 200, reply.text
    assert np.allclose(reply.json()["embeddings"], predictor.embed(rows).values, atol=2e-6)

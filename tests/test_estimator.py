"""The scikit-learn estimators: scikit-learn's own checks, clone / cross_val_score /
Pipeline, the same model as the `train` entry point, artifacts the real server serves,
pretrain once / fine-tune many, dtypes, progress bar and errors."""

from __future__ import annotations

import json
import re
import signal
import tarfile

import numpy as np
import pandas as pd
import pytest
from conftest import Job, Server, make_table
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.utils import estimator_checks
from sklearn.utils.estimator_checks import parametrize_with_checks

from tabtransformer import TabTransformerClassifier, TabTransformerRegressor, load_model
from tabtransformer import estimator as estimator_module
from tabtransformer.artifacts import read_artifact as read
from tabtransformer.estimator import InvalidInput, load

# Small and quick: scikit-learn's checks fit a few hundred times on tables of 20-300 rows.
QUICK = {
    "n_epochs": 2,
    "n_blocks": 1,
    "ensemble_size": 1,
    "cv_folds": 1,
    "input_dim": 8,
    "n_heads": 2,
    "verbose": False,
}
# Enough training to converge on scikit-learn's blobs (its *_train checks ask for it).
CONVERGES = {**QUICK, "n_epochs": 30, "patience": 30, "learning_rate": 0.01}
TABLE = {"n_epochs": 3, "n_blocks": 1, "cv_folds": 1, "ensemble_size": 2, "verbose": False}
# Checks that cannot pass as they are, and why (each is run; a pass would fail the test).
EXPECTED_FAILURES = {
    "check_classifiers_train": (
        "asks for a converged model and QUICK trains 2 epochs; it passes with CONVERGES "
        "(test_converged_models_pass_the_training_checks)"
    ),
    "check_regressors_train": (
        "asks for a converged model and QUICK trains 2 epochs; it passes with CONVERGES "
        "(test_converged_models_pass_the_training_checks)"
    ),
    "check_methods_sample_order_invariance": (
        "transform's float32 embeddings differ in the last bits (1e-7 relative) when the "
        "rows of a batch are reordered; predictions are within the check's tolerance"
    ),
    "check_methods_subset_invariance": (
        "the same float32 last bits when transform runs over a subset of the rows (1.5e-7 "
        "absolute against the check's 1e-7); predictions are within the check's tolerance"
    ),
}


@parametrize_with_checks(
    [TabTransformerClassifier(**QUICK), TabTransformerRegressor(**QUICK)],
    expected_failed_checks=lambda estimator: EXPECTED_FAILURES,
)
@pytest.mark.slow
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.slow
def test_converged_models_pass_the_training_checks():
    estimator_checks.check_classifiers_train("classifier", TabTransformerClassifier(**CONVERGES))
    estimator_checks.check_regressors_train("regressor", TabTransformerRegressor(**CONVERGES))


def features_and_labels(n: int = 240, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    table = make_table("binary", n=n, seed=seed)
    return table.drop(columns="label"), table["label"]


@pytest.fixture(scope="module")
def fitted() -> TabTransformerClassifier:
    X, y = features_and_labels()
    return TabTransformerClassifier(**TABLE).fit(X, y)


def test_constructor_arguments_are_the_schema_with_a_readable_repr():
    estimator = TabTransformerClassifier(n_epochs=5, numeric_embedding="ple")
    params = estimator.get_params()
    assert params["n_epochs"] == 5 and params["learning_rate"] == 0.0  # the schema's: auto
    assert "task" not in params and "target_column" not in params
    assert repr(estimator) == "TabTransformerClassifier(n_epochs=5, numeric_embedding='ple')"
    with pytest.raises(TypeError, match="unknown argument"):
        TabTransformerClassifier(n_epoch=5)
    X, y = features_and_labels(40)
    with pytest.raises(InvalidInput, match="Hyperparameter 'n_epochs' has the invalid value 0"):
        TabTransformerClassifier(n_epochs=0).fit(X, y)


@pytest.mark.slow
def test_clone_cross_val_score_grid_search_and_a_pipeline_with_a_column_transformer():
    X, y = features_and_labels()
    scores = cross_val_score(clone(TabTransformerClassifier(**TABLE)), X, y, cv=2)
    assert scores.shape == (2,) and (scores > 0.5).all()
    keep = ColumnTransformer(
        [("as_is", "passthrough", ["color", "shape"]), ("scaled", "passthrough", ["size"])],
        verbose_feature_names_out=False,
    ).set_output(transform="pandas")
    pipeline = Pipeline([("columns", keep), ("model", TabTransformerClassifier(**TABLE))])
    pipeline.fit(X, y)
    assert pipeline.predict(X.head(5)).shape == (5,)
    search = GridSearchCV(TabTransformerClassifier(**TABLE), {"n_epochs": [1, 2]}, cv=2)
    search.fit(X.head(120), y.head(120))
    assert search.best_params_["n_epochs"] in (1, 2) and search.best_estimator_.n_epochs in (1, 2)
    # As a transformer: its embeddings feed another model.
    stacked = Pipeline(
        [("embed", TabTransformerClassifier(**TABLE)), ("head", LogisticRegression(max_iter=1000))]
    )
    assert stacked.fit(X, y).score(X, y) > 0.6


@pytest.mark.slow
def test_fit_in_process_gives_the_train_entry_points_model(fitted, tmp_path):
    """The same rows, seed and hyperparameters through `train` as a subprocess."""
    X, y = features_and_labels()
    job = Job(tmp_path / "opt_ml")
    frame = X.assign(target=y.to_numpy())
    path = job.channel("training", frame, filename="data.parquet")
    (path.parent / "categorical_index.json").write_text(json.dumps({"cat_index_list": [0, 2]}))
    hp = json.loads(fitted.artifact_["hyperparameters.json"])
    job.hyperparameters(hp)
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    X_new, _ = features_and_labels(60, seed=3)
    served = load_model(job.model).predict_proba(X_new)
    assert np.array_equal(fitted.predict_proba(X_new), served)
    assert (job.model / "model.safetensors").read_bytes() == fitted.artifact_["model.safetensors"]


@pytest.mark.slow
def test_a_saved_estimator_is_served_by_the_real_server(fitted, tmp_path):
    archive = fitted.save(tmp_path / "opt_ml" / "model" / "model.tar.gz")
    with tarfile.open(archive) as tar:
        assert "model.safetensors" in tar.getnames()
    X_new, _ = features_and_labels(30, seed=4)
    with Server(tmp_path / "opt_ml") as server:
        reply = server.post(X_new.to_csv(header=False, index=False))
        assert reply.status_code == 200, reply.text
    served = np.array(reply.json()["probabilities"])
    assert np.allclose(served, fitted.predict_proba(X_new), atol=1e-6)
    folder = fitted.save(tmp_path / "folder")
    assert np.array_equal(load(folder).predict_proba(X_new), fitted.predict_proba(X_new))


def test_load_builds_the_model_once(fitted, tmp_path, monkeypatch):
    folder = fitted.save(tmp_path / "folder")
    loads = []
    monkeypatch.setattr(estimator_module, "read_artifact", lambda p: loads.append(p) or read(p))
    monkeypatch.setattr(estimator_module, "load_model", lambda p: loads.append(p) or load_model(p))
    loaded = load(folder)
    assert len(loads) == 1  # checking that the folder is a model does not build it
    loads.clear()
    X_new, _ = features_and_labels(10, seed=2)
    assert np.array_equal(loaded.predict(X_new), fitted.predict(X_new))
    assert loads == []  # predicting uses the model loaded once


def test_load_names_the_folder_that_is_not_a_model_or_is_damaged(fitted, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInput, match=re.escape(f"{empty} is not a TabTransformer model")):
        load(empty)
    folder = fitted.save(tmp_path / "folder")
    (folder / "model_config.json").write_text('{"dim": 32, "surprise": 1}')
    with pytest.raises(InvalidInput, match=re.escape(f"{folder} holds a damaged or incompat")):
        load(folder)
    with pytest.raises(InvalidInput, match=re.escape(f"{folder} holds a damaged or incompat")):
        TabTransformerClassifier(pretrained_model=str(folder)).fit(*features_and_labels(20))
    (folder / "preprocessing.json").write_text("[1, 2")
    with pytest.raises(InvalidInput, match=re.escape(f"{folder} holds a damaged TabTransformer")):
        load(folder)


@pytest.mark.slow
def test_load_reads_a_sagemaker_jobs_model_tar_gz(tmp_path):
    job = Job(tmp_path / "opt_ml")
    job.channel("training", make_table("regression", n=200), header=True)
    job.hyperparameters({**{k: str(v) for k, v in TABLE.items() if k != "verbose"},
                         "target_column": "label", "report": "false"})  # fmt: skip
    assert job.train().returncode == 0
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in job.model.iterdir():
            tar.add(path, arcname=path.name)
    regressor = load(archive)
    assert isinstance(regressor, TabTransformerRegressor) and regressor.n_epochs == 3
    X = make_table("regression", n=20, seed=1).drop(columns="label")
    assert np.array_equal(regressor.predict(X), load_model(job.model).predict(X))
    with pytest.raises(InvalidInput, match=r"load it with TabTransformerRegressor\.load"):
        TabTransformerClassifier.load(archive)


@pytest.mark.slow
def test_pretrain_once_and_fine_tune_several_targets():
    X, y = features_and_labels(200)
    pool, _ = features_and_labels(600, seed=7)
    encoder = TabTransformerClassifier(
        **TABLE, pretrain_epochs=2, pretrain_steps=0, pretrain_batch_size=128
    ).pretrain(pool)
    first = TabTransformerClassifier(**TABLE, pretrained_model=encoder.pretrained_).fit(X, y)
    other = (X["shape"] == "square").map({True: "square", False: "round"})
    second = clone(first).fit(X, other)  # the encoder survives clone: it is an argument
    for model in (first, second):
        assert model.metrics_["pretrained"] == "from model channel"
    assert list(second.classes_) == ["round", "square"]
    fresh = TabTransformerClassifier(**TABLE).fit(X, y)
    assert fresh.metrics_["pretrained"] is None


@pytest.mark.slow
def test_dtypes_become_the_jobs_column_kinds(tmp_path):
    rng = np.random.default_rng(0)
    n = 120
    X = pd.DataFrame(
        {
            "code": pd.Categorical(rng.choice([10, 20, 30], n)),  # numbers, categorical
            "flag": rng.choice([True, False], n),
            "name": pd.array(rng.choice(["a", "b"], n), dtype="string"),
            "amount": rng.normal(size=n),
        }
    )
    y = np.where(X["flag"], "yes", "no")
    model = TabTransformerClassifier(**TABLE).fit(X, y)
    pre = model.predictor_.preprocessor
    assert [c.name for c in pre.categorical] == ["code", "flag", "name"]
    assert [c.name for c in pre.numeric] == ["amount"]
    array = np.c_[rng.integers(0, 3, n), rng.normal(size=n)]
    by_index = TabTransformerRegressor(**TABLE, categorical_features=[0]).fit(array, array[:, 1])
    assert [c.name for c in by_index.predictor_.preprocessor.categorical] == ["x0"]
    bad = X.head(3).assign(amount=["1.5", "lots", None])
    with pytest.raises(InvalidInput, match=r"Column 'amount' is numeric.*row 1 holds 'lots'"):
        model.predict(bad)
    with pytest.raises(InvalidInput, match=r"lacks the column\(s\) \['amount'\]"):
        model.predict(X.drop(columns="amount").assign(other=1.0))
    with pytest.raises(InvalidInput, match="X has 3 features, but TabTransformerClassifier"):
        model.predict(X.iloc[:, :3].to_numpy())


@pytest.mark.slow
def test_a_progress_bar_follows_the_epochs_unless_verbose_is_off(capsys):
    X, y = features_and_labels(120)
    before = signal.getsignal(signal.SIGTERM)
    TabTransformerClassifier(**{**TABLE, "verbose": True}).fit(X, y)
    bar = capsys.readouterr().err
    assert "fine-tune" in bar and "3/3" in bar and "epoch" in bar
    assert signal.getsignal(signal.SIGTERM) is before  # the job's handler is gone again
    TabTransformerClassifier(**TABLE).fit(X, y)
    assert "fine-tune" not in capsys.readouterr().err
    TabTransformerClassifier(**{**TABLE, "verbose": True, "cv_folds": 2}).fit(X, y)
    bar = capsys.readouterr().err  # one bar per cross-fitted model, named after it
    assert "fine-tune model 1/2" in bar and "fine-tune model 2/2" in bar

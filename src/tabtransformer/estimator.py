"""The notebook road: scikit-learn estimators over the training job itself.

`TabTransformerClassifier` and `TabTransformerRegressor` take the schema's hyperparameters
as constructor arguments (same names, defaults and checks). `fit` writes the rows into an
`/opt/ml` tree in a scratch folder (Parquet, so dtypes and numbers arrive as they are,
and `categorical_index.json` naming the categorical columns) and runs the training job in
this process (`job.run`: the same plan, preprocessing, loops and artifact as the `train`
entry point). The fitted estimator keeps the artifact's files (`save` writes them as they
are, folder or model.tar.gz) and serves from them in process (`predict`, `predict_proba`,
`embed`, `explain`). `load` reads any artifact, a SageMaker job's model.tar.gz included.

    clf = TabTransformerClassifier().fit(X, y, X_unlabeled=pool)  # few labels: pretrains
    clf.predict_proba(X_test)
    clf.save("model.tar.gz")  # what a SageMaker endpoint serves

Pretrain once, fine-tune many: `encoder = TabTransformerClassifier().pretrain(X_unlabeled)`
then `TabTransformerClassifier(pretrained_model=encoder.pretrained_).fit(X, y)` for each
target (the encoder reaches the job through its `model` channel; `pretrained_` survives
`clone`, so cross_val_score and GridSearchCV fine-tune from it too). A progress bar
follows the epochs (`verbose`); the job's own log lines go to the `tabtransformer` logger
as in a job.
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import os
import tarfile
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, TransformerMixin
from sklearn.exceptions import DataConversionWarning
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted

from tabtransformer import hyperparameters
from tabtransformer.artifacts import (
    HYPERPARAMETERS,
    PREPROCESSING,
    WEIGHTS,
    Artifact,
    check_model_files,
    load_model,
    predictor_of,
    read_artifact,
    unpacked_model_archive,
)
from tabtransformer.channels import CATEGORICAL_INDEX_FILE
from tabtransformer.errors import UserError
from tabtransformer.inference import Attributions, Embeddings, Predictor
from tabtransformer.local import LocalJob
from tabtransformer.loop import EpochProgress

# Hyperparameters the estimator sets itself: the task (the class says it), the target
# column (its own), pretraining alone (`pretrain`), the report (a job's output folder).
SET_BY_ESTIMATOR = ("task", "target_column", "pretrain_only", "report")
PARAMETERS = tuple(h for h in hyperparameters.SCHEMA if h.name not in SET_BY_ESTIMATOR)
# The estimator's own arguments, after the schema's.
OWN_DEFAULTS: dict[str, Any] = {
    "categorical_features": None,
    "pretrained_model": None,
    "verbose": True,
}
TARGET = "target"
ArtifactFiles = dict[str, bytes]  # file name -> the bytes the job wrote


@dataclass(frozen=True)
class PretrainedEncoder:
    """What `pretrain` trained: a pretraining-only artifact's files. As an estimator's
    `pretrained_model` it survives `clone` (it is copied, not refitted)."""

    files: ArtifactFiles

    def save(self, path: str | os.PathLike) -> Path:
        """Write the pretrained artifact (a folder), e.g. for a SageMaker job's `model`
        channel."""
        write_files(self.files, Path(path))
        return Path(path)


class InvalidInput(UserError, ValueError):
    """A bad argument or table (scikit-learn's convention: a ValueError); the message is
    the job's, naming the column, row or hyperparameter and what is allowed."""


class TabTransformerEstimator(TransformerMixin, BaseEstimator):
    """What the classifier and the regressor share: parameters, fitting through the job,
    the artifact's files and the in-process predictor; a transformer too (`transform`: the
    contextual embeddings), so that it can feed another model in a Pipeline."""

    task: ClassVar[str]  # the job's task: "classification" (binary or multiclass) or not

    def __init__(self, **params: Any):
        unknown = sorted(set(params) - set(_signature_names()))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unknown argument(s) {unknown}; the arguments are "
                "the hyperparameters (docs/hyperparameters.md) and "
                f"{', '.join(OWN_DEFAULTS)}."
            )
        defaults = {h.name: h.default for h in PARAMETERS} | OWN_DEFAULTS
        for name, default in defaults.items():
            setattr(self, name, params.get(name, default))

    # --- fitting ------------------------------------------------------------------------
    def fit(
        self,
        X: Any,
        y: Any,
        *,
        X_unlabeled: Any = None,
        eval_set: tuple[Any, Any] | None = None,
    ) -> TabTransformerEstimator:
        """Train on (X, y) through the training job: `X_unlabeled` (features only) is its
        `unlabeled` channel (the preprocessing sees it; by default the job pretrains on
        it with at most 100 labelled rows; semi_supervised uses it), `eval_set` = (X, y) its
        `validation` channel (else the job holds rows out or cross-fits, as `cv_folds`
        says)."""
        frame = self._features(X, fitting=True)
        target = self._target(y, len(frame))
        channels = {"training": frame.assign(**{TARGET: target.to_numpy()})}
        if eval_set is not None:
            X_valid, y_valid = eval_set
            valid = self._features(X_valid)
            channels["validation"] = valid.assign(
                **{TARGET: self._target(y_valid, len(valid)).to_numpy()}
            )
        if X_unlabeled is not None:
            channels["unlabeled"] = self._features(X_unlabeled)
        self._set_artifact(*self._run_job(channels, self._job_hyperparameters(target)))
        return self

    def pretrain(self, X_unlabeled: Any) -> TabTransformerEstimator:
        """Pretrain an encoder on unlabeled rows (a pretraining-only job); a later `fit` of
        this estimator, or of one given it as `pretrained_model`, fine-tunes from it."""
        frame = self._features(X_unlabeled, fitting=True)
        hp = {**self._job_hyperparameters(None), "pretrain_only": "true"}
        self.pretrained_ = PretrainedEncoder(self._run_job({"unlabeled": frame}, hp)[0])
        return self

    def _job_hyperparameters(self, target: pd.Series | None) -> dict[str, str]:
        """The job's hyperparameters.json: this estimator's, checked by the schema."""
        values = {h.name: getattr(self, h.name) for h in PARAMETERS}
        try:
            hyperparameters.parse(values)
        except UserError as e:
            raise InvalidInput(str(e)) from None
        hp = {k: _as_text(v) for k, v in values.items()}
        hp |= {"target_column": TARGET, "report": "false", "task": self._job_task(target)}
        return hp

    def _job_task(self, target: pd.Series | None) -> str:
        if target is None or self.task == "regression":
            return "auto" if target is None else "regression"
        return "binary" if target.nunique() == 2 else "multiclass"

    def _run_job(
        self, channels: dict[str, pd.DataFrame], hp: dict[str, str]
    ) -> tuple[ArtifactFiles, Predictor | None]:
        """Write the tree and run the job in this process: the artifact's files, and the
        model loaded from them (None for a pretrained encoder, which does not predict)."""
        with tempfile.TemporaryDirectory(prefix="tabtransformer-fit-") as tmp:
            job = LocalJob(Path(tmp) / "opt_ml", hp)
            for name, frame in channels.items():
                path = job.channel(name, frame, filename="data.parquet")
                categorical = [i for i, c in enumerate(frame.columns) if c in self.categorical_in_]
                (path.parent / CATEGORICAL_INDEX_FILE).write_text(
                    json.dumps({"cat_index_list": categorical})
                )
            base = self._base_files()
            if base is not None:
                write_files(base, job.paths.channel("model"))
            with _progress_bar(bool(self.verbose)):
                try:
                    job.train_in_process()
                except UserError as e:
                    raise InvalidInput(str(e).replace(str(job.base), "<job>")) from None
            predictor = load_model(job.model) if "training" in channels else None
            return read_files(job.model), predictor

    def _base_files(self) -> ArtifactFiles | None:
        """The encoder to fine-tune from: `pretrained_model` (a PretrainedEncoder, an
        estimator after pretrain or fit, or an artifact's path), else what this
        estimator's `pretrain` trained."""
        given = self.pretrained_model
        if given is None:
            pretrained = getattr(self, "pretrained_", None)
            return pretrained.files if pretrained is not None else None
        if isinstance(given, PretrainedEncoder):
            return given.files
        if isinstance(given, TabTransformerEstimator):
            pretrained = getattr(given, "pretrained_", None)
            files = pretrained.files if pretrained else getattr(given, "artifact_", None)
            if files is None:
                raise InvalidInput(
                    "pretrained_model is an estimator that was neither pretrained nor fitted "
                    "(clone refits what it copies): give its pretrained_ (what pretrain "
                    "returns) or call its pretrain(X_unlabeled) first."
                )
            return files
        files = artifact_files(Path(os.fspath(given)))
        read_artifact_files(files, given)  # damaged: an error naming the user's path
        return files

    # --- the tables ---------------------------------------------------------------------
    def _features(self, X: Any, fitting: bool = False) -> pd.DataFrame:
        """X as the job's feature table: a DataFrame's columns by name (category, object,
        string and boolean dtypes categorical), or an array's columns x0, x1, ...
        (`categorical_features`: their indexes or names)."""
        if sparse.issparse(X):
            raise InvalidInput(
                "Sparse input is not supported: pass a dense array or DataFrame "
                "(X.toarray()); a table's categorical columns need no one-hot encoding here."
            )
        if isinstance(X, pd.DataFrame):
            frame = X.copy()
            frame.columns = [str(c) for c in frame.columns]
            named = True
        else:
            array = np.asarray(X, dtype=None if _is_numeric_array(X) else object)
            if array.ndim != 2:
                raise InvalidInput(
                    f"X must be 2-dimensional (rows, columns); got an array of shape "
                    f"{array.shape}. Reshape your data: X.reshape(-1, 1) for a single "
                    "column, X.reshape(1, -1) for a single row."
                )
            if np.iscomplexobj(array):
                raise InvalidInput("Complex data not supported: X holds complex numbers.")
            frame = pd.DataFrame(array, columns=[f"x{i}" for i in range(array.shape[1])])
            named = False
        if len(frame.columns) == 0:
            raise InvalidInput(
                f"Found array with 0 feature(s) (shape={frame.shape}) while a minimum of 1 is "
                "required."
            )
        if len(frame) == 0:
            raise InvalidInput(
                f"Found array with 0 sample(s) (shape={frame.shape}) while a minimum of 1 is "
                "required."
            )
        if len(set(frame.columns)) != len(frame.columns) or TARGET in frame.columns:
            raise InvalidInput(
                f"X's column names must be unique and other than {TARGET!r}; got "
                f"{list(frame.columns)[:20]}."
            )
        if fitting:
            self.n_features_in_ = frame.shape[1]
            if named:
                self.feature_names_in_ = np.asarray(frame.columns, dtype=object)
            elif hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
            self.categorical_in_ = self._categorical_columns(frame)
        else:
            frame = self._check_columns(frame, named)
        for column in frame.columns:
            if column in self.categorical_in_:
                frame[column] = _as_categories(frame[column])
            else:
                frame[column] = _as_numbers(frame[column], column)
        return frame

    def _categorical_columns(self, frame: pd.DataFrame) -> list[str]:
        chosen = self.categorical_features
        names = list(frame.columns)
        if chosen is None:
            return [c for c in names if not _numeric_dtype(frame[c])]
        listed = [chosen] if isinstance(chosen, (str, int)) else list(chosen)
        out = []
        for item in listed:
            if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
                if not 0 <= item < len(names):
                    raise InvalidInput(
                        f"categorical_features names column index {item}, but X has "
                        f"{len(names)} columns (indexes 0 to {len(names) - 1})."
                    )
                out.append(names[item])
            elif str(item) in names:
                out.append(str(item))
            else:
                raise InvalidInput(
                    f"categorical_features names {item!r}, which is not a column of X "
                    f"(columns: {names[:20]})."
                )
        text = [c for c in names if c not in out and not _numeric_dtype(frame[c])]
        return out + text  # a text column can only be categorical

    def _check_columns(self, frame: pd.DataFrame, named: bool) -> pd.DataFrame:
        check_is_fitted(self, "n_features_in_")
        if frame.shape[1] != self.n_features_in_:
            raise InvalidInput(
                f"X has {frame.shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input."
            )
        if named and hasattr(self, "feature_names_in_"):
            expected = list(self.feature_names_in_)
            missing = [c for c in expected if c not in frame.columns]
            if missing:
                raise InvalidInput(
                    f"X lacks the column(s) {missing[:20]} the estimator was fitted with "
                    f"(expected {expected[:20]})."
                )
            return frame[expected]
        names = (
            list(self.feature_names_in_)
            if hasattr(self, "feature_names_in_")
            else [f"x{i}" for i in range(frame.shape[1])]
        )
        return frame.set_axis(names, axis=1)

    def _target(self, y: Any, n_rows: int) -> pd.Series:
        if y is None:
            raise InvalidInput(
                f"{type(self).__name__} requires y to be passed, but the target y is None."
            )
        values = np.asarray(y)
        if np.iscomplexobj(values):
            raise InvalidInput("Complex data not supported: y holds complex numbers.")
        if values.ndim == 2 and values.shape[1] == 1:
            warnings.warn(
                "A column-vector y was passed when a 1d array was expected: y.ravel() is "
                "used (one target per model).",
                DataConversionWarning,
                stacklevel=3,
            )
            values = values[:, 0]
        if values.ndim != 1 or len(values) != n_rows:
            raise InvalidInput(
                f"y must be one value per row of X ({n_rows} rows); got shape {values.shape}."
            )
        if n_rows < 2:
            raise InvalidInput(
                f"X has {n_rows} sample(s): training needs at least 2 (n_samples={n_rows})."
            )
        return self._encode_target(pd.Series(values))

    def _encode_target(self, y: pd.Series) -> pd.Series:
        return y

    # --- the fitted model ---------------------------------------------------------------
    def _set_artifact(self, files: ArtifactFiles, predictor: Predictor | None = None) -> None:
        """The fitted artifact's files, and the model loaded from them (None: load it)."""
        self.artifact_ = files
        self._predictor = predictor
        self.metrics_ = self.predictor_.metrics

    @property
    def predictor_(self) -> Predictor:
        """The artifact loaded in this process (as `load_model` loads it)."""
        check_is_fitted(self, "artifact_")
        if getattr(self, "_predictor", None) is None:
            with tempfile.TemporaryDirectory() as tmp:
                write_files(self.artifact_, Path(tmp))
                self._predictor = load_model(tmp)
        return self._predictor

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_predictor", None)  # rebuilt from the artifact's files
        return state

    def _outputs(self, X: Any) -> np.ndarray:
        frame = self._features(X)
        try:
            return self.predictor_.outputs(frame)
        except UserError as e:
            raise InvalidInput(str(e)) from None

    def embed(self, X: Any, layer: int = -1) -> Embeddings:
        """Contextual embeddings per token column (`Predictor.embed`; cross-fitted: the
        folds' mean)."""
        try:
            return self.predictor_.embed(self._features(X), layer)
        except UserError as e:
            raise InvalidInput(str(e)) from None

    def transform(self, X: Any) -> np.ndarray:
        """The last layer's contextual embeddings, one row each: (N, tokens * d)."""
        values = self.embed(X).values
        return values.reshape(len(values), -1)

    def explain(self, X: Any) -> pd.DataFrame:
        """Per row and feature column: the prediction minus the prediction with that column
        missing (`Predictor.explain`), as a DataFrame with X's columns."""
        try:
            attributions: Attributions = self.predictor_.explain(self._features(X))
        except UserError as e:
            raise InvalidInput(str(e)) from None
        return pd.DataFrame(attributions.values, columns=attributions.columns)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the artifact as the job wrote it: a folder, or a model.tar.gz (a path
        ending in .tar.gz), which a SageMaker endpoint or `serve` loads as it is."""
        check_is_fitted(self, "artifact_")
        path = Path(path)
        if path.name.endswith(".tar.gz"):
            path.parent.mkdir(parents=True, exist_ok=True)
            with tarfile.open(path, "w:gz") as tar:
                for name, data in sorted(self.artifact_.items()):
                    info = tarfile.TarInfo(name)
                    info.size, info.mode = len(data), 0o644
                    tar.addfile(info, io.BytesIO(data))
        else:
            write_files(self.artifact_, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> TabTransformerEstimator:
        """An estimator fitted from an artifact (folder or model.tar.gz, of a SageMaker job
        or of `save`): its hyperparameters as the arguments, ready to predict."""
        return cls._from_files(artifact_files(Path(os.fspath(path))), path)

    @classmethod
    def _from_files(cls, files: ArtifactFiles, path: str | os.PathLike) -> TabTransformerEstimator:
        """`load` of an artifact's files, read once (`path`: where they came from)."""
        artifact = read_artifact_files(files, path)
        if artifact.target is None:
            raise InvalidInput(
                f"{path} holds a pretrained encoder without a prediction head: use it as "
                f"{cls.__name__}(pretrained_model={str(path)!r}).fit(X, y)."
            )
        expected = "regression" if cls.task == "regression" else "classification"
        actual = "regression" if artifact.target.task == "regression" else "classification"
        if expected != actual:
            other = (
                "TabTransformerRegressor" if actual == "regression" else "TabTransformerClassifier"
            )
            raise InvalidInput(f"{path} holds a {actual} model: load it with {other}.load.")
        saved = json.loads(files[HYPERPARAMETERS]) if HYPERPARAMETERS in files else {}
        params = {k: v for k, v in saved.items() if k in {h.name for h in PARAMETERS}}
        estimator = cls(**params)
        names = artifact.preprocessor.feature_names
        estimator.n_features_in_ = len(names)
        if artifact.header:
            estimator.feature_names_in_ = np.asarray(names, dtype=object)
        categorical = {c.name for c in artifact.preprocessor.categorical}
        estimator.categorical_in_ = [n for n in names if n in categorical]
        estimator._set_loaded(artifact.target.classes)
        estimator._set_artifact(files, predictor_of(artifact))
        return estimator

    def _set_loaded(self, classes: list[Any] | None) -> None:
        """What `load` sets beyond the artifact (a classifier: its classes)."""

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # a missing value is a value the model knows
        tags.input_tags.categorical = True
        tags.input_tags.string = True
        tags.non_deterministic = False
        tags.transformer_tags.preserves_dtype = []  # embeddings are float32 whatever X is
        return tags


class TabTransformerClassifier(ClassifierMixin, TabTransformerEstimator):
    """TabTransformer for classification (binary or multiclass), scikit-learn style.

    Arguments: the training job's hyperparameters (docs/hyperparameters.md; `task`,
    `target_column`, `pretrain_only` and `report` excepted) and `categorical_features`
    (array columns that are categorical: indexes or names; DataFrames: by dtype),
    `pretrained_model` (an estimator after `pretrain`, or an artifact's path) and `verbose`
    (a progress bar)."""

    task = "classification"

    def _encode_target(self, y: pd.Series) -> pd.Series:
        if y.isna().any():
            row = int(np.flatnonzero(y.isna().to_numpy())[0])
            raise InvalidInput(f"y has a missing label at row {row}: every row needs one.")
        kind = type_of_target(y.to_numpy())
        if kind not in ("binary", "multiclass"):
            raise InvalidInput(
                f"Unknown label type: {kind}. A classifier takes class labels (text, "
                "integers or booleans); for a continuous target use TabTransformerRegressor."
            )
        classes = np.unique(y.to_numpy())
        if len(classes) < 2:
            raise InvalidInput(
                f"y has one class ({classes[0]!r}): classification needs at least two."
            )
        self.classes_ = classes
        return y  # the job's classes are these, sorted the same way (checked after fit)

    def _set_artifact(self, files: ArtifactFiles, predictor: Predictor | None = None) -> None:
        super()._set_artifact(files, predictor)
        trained = self.predictor_.classes or []
        if len(trained) != len(self.classes_):
            raise InvalidInput(
                f"The job found {len(trained)} classes ({trained[:10]}) in y's "
                f"{len(self.classes_)} ({list(self.classes_)[:10]}): give y as labels of "
                "one kind (all text or all numbers)."
            )

    def _set_loaded(self, classes: list[Any] | None) -> None:
        self.classes_ = np.asarray(classes, dtype=object)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (N, classes), columns in `classes_` order."""
        return self._outputs(X)

    def predict(self, X: Any) -> np.ndarray:
        """Each row's class (binary: at the decision threshold chosen in training)."""
        probabilities = self.predict_proba(X)
        return self.classes_[self.predictor_.target.decide(probabilities)]


class TabTransformerRegressor(RegressorMixin, TabTransformerEstimator):
    """TabTransformer for regression, scikit-learn style (the arguments: see
    TabTransformerClassifier)."""

    task = "regression"

    def _encode_target(self, y: pd.Series) -> pd.Series:
        return _as_numbers(y, "y")

    def predict(self, X: Any) -> np.ndarray:
        """Each row's predicted value."""
        return self._outputs(X)


# --- the artifact's files ---------------------------------------------------------------
def read_files(folder: Path) -> ArtifactFiles:
    """The files a model folder holds (its top level), by name."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def write_files(files: ArtifactFiles, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
        os.chmod(folder / name, 0o644)


def artifact_files(path: Path) -> ArtifactFiles:
    """An artifact's files from a model folder or a model.tar.gz (checked as serving
    checks it: bounded, regular files only)."""
    if not path.exists():
        raise InvalidInput(f"{path} does not exist: give a model folder or a model.tar.gz.")
    if path.is_dir() and not (path / WEIGHTS).exists():
        archive = path / "model.tar.gz"
        path = archive if archive.is_file() else path
    try:
        if path.is_file():
            with unpacked_model_archive(path) as folder:
                return read_files(folder)
        check_model_files(path)  # a clear error for a folder that is not a model
        return read_files(path)
    except UserError as e:
        raise InvalidInput(str(e)) from None


def load(path: str | os.PathLike) -> TabTransformerEstimator:
    """A fitted TabTransformerClassifier or TabTransformerRegressor, whichever the artifact
    (folder or model.tar.gz) holds."""
    files = artifact_files(Path(os.fspath(path)))
    try:
        target = json.loads(files[PREPROCESSING]).get("target") or {}
        regression = target.get("task") == "regression"
    except (ValueError, AttributeError) as e:
        raise InvalidInput(
            f"{path} holds a damaged TabTransformer model ({PREPROCESSING}: {e!r:.200}); "
            "use the model.tar.gz a training job of this image wrote."
        ) from None
    return (TabTransformerRegressor if regression else TabTransformerClassifier)._from_files(
        files, path
    )


def read_artifact_files(files: ArtifactFiles, shown_as: str | os.PathLike) -> Artifact:
    """The model the files hold; a damaged one is an InvalidInput naming `shown_as`, where
    the files came from."""
    with tempfile.TemporaryDirectory() as tmp:
        write_files(files, Path(tmp))
        try:
            return read_artifact(tmp)
        except UserError as e:
            raise InvalidInput(str(e).replace(tmp, str(shown_as))) from None


# --- columns ----------------------------------------------------------------------------
def _numeric_dtype(values: pd.Series) -> bool:
    dtype = values.dtype
    return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)


def _is_numeric_array(X: Any) -> bool:
    try:
        return np.asarray(X).dtype.kind in "biuf"
    except (TypeError, ValueError):
        return False


def _as_categories(values: pd.Series) -> pd.Series:
    """A categorical column as the job reads it: numbers, booleans, text and categories as
    they are (the job's tokens write 1, 1.0 and "1" alike); a column of mixed kinds (which
    Parquet cannot hold) as text."""
    if values.dtype != object or pd.api.types.infer_dtype(values, skipna=True) in (
        "string",
        "empty",
        "boolean",
        "integer",
        "floating",
    ):
        return values
    return values.map(str, na_action="ignore")


def _as_numbers(values: pd.Series, column: str) -> pd.Series:
    """A numeric column as float64, or InvalidInput naming its first non-number."""
    if _numeric_dtype(values):
        return values.astype("float64")
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() & values.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InvalidInput(
            f"Column {column!r} is numeric (it was when fitted, or categorical_features "
            f"does not name it), but row {row} holds {values.iloc[row]!r}: give numbers, or "
            "name the column in categorical_features."
        )
    return numbers.astype("float64")


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _signature_names() -> list[str]:
    return [h.name for h in PARAMETERS] + list(OWN_DEFAULTS)


def _signature() -> inspect.Signature:
    """The constructor's signature scikit-learn reads (get_params, clone): every argument
    keyword-only with its default."""
    self = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    defaults = {h.name: h.default for h in PARAMETERS} | OWN_DEFAULTS
    keyword = inspect.Parameter.KEYWORD_ONLY
    return inspect.Signature(
        [self, *(inspect.Parameter(n, keyword, default=d) for n, d in defaults.items())]
    )


TabTransformerEstimator.__init__.__signature__ = _signature()  # type: ignore[attr-defined]


# --- the progress bar -------------------------------------------------------------------
class _EpochBar(logging.Handler):
    """A tqdm bar per phase (pretraining, then each model fine-tuned), moved by the epoch
    records of the job's loop."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.bar: Any = None
        self.key: tuple[str, int] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        progress: EpochProgress | None = getattr(record, "progress", None)
        if progress is None:
            return
        from tqdm.auto import tqdm

        key = (progress.phase, progress.n_epochs)
        if self.bar is None or key != self.key or progress.epoch <= self.bar.n:
            self.close()
            desc = progress.phase
            self.bar = tqdm(total=progress.n_epochs, desc=desc, unit="epoch", leave=True)
            self.key = key
        best = "" if progress.best is None else f"{progress.best:.4g}"
        postfix = {"loss": f"{progress.loss:.4g}", f"best_{progress.watch}": best}
        self.bar.set_postfix(postfix, refresh=False)
        if progress.stopping:
            self.bar.set_description(f"{self.bar.desc} (early stop)", refresh=False)
        self.bar.update(progress.epoch - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        super().close()


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[None]:
    """The epoch bar for the duration of a job. The loop's logger passes its INFO records
    to the bar; where logging is not set to show them (the usual notebook), they go to the
    bar only, so that turning the bar on prints nothing else."""
    if not enabled:
        yield
        return
    handler = _EpochBar()
    logger = logging.getLogger("tabtransformer.loop")
    level, propagate = logger.level, logger.propagate
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
        logger.propagate = False
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
        handler.close()


__all__ = [
    "InvalidInput",
    "PretrainedEncoder",
    "TabTransformerClassifier",
    "TabTransformerRegressor",
    "load",
]

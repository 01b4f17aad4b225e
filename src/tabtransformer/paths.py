"""Where SageMaker puts things: `/opt/ml`, or the folder named by `SAGEMAKER_BASE_DIR`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def under(relative: str) -> property:
    """A path of the layout: `relative` under the base folder."""
    return property(lambda self: self.base / relative, doc=f"<base>/{relative}")


@dataclass(frozen=True)
class SageMakerPaths:
    """The `/opt/ml` layout a training or serving container reads and writes."""

    base: Path

    @classmethod
    def from_env(cls) -> SageMakerPaths:
        return cls(Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml")))

    config = under("input/config")
    hyperparameters = under("input/config/hyperparameters.json")
    input_data_config = under("input/config/inputdataconfig.json")
    resource_config = under("input/config/resourceconfig.json")
    data = under("input/data")
    model = under("model")
    output = under("output")
    output_data = under("output/data")
    failure = under("output/failure")
    checkpoints = under("checkpoints")

    def channel(self, name: str) -> Path:
        return self.data / name

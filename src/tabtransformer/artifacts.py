"""The model artifact: save it atomically, load it safely (`load_model` gives a Predictor).

`model/` holds `model.safetensors` (weights: no pickle), `model_config.json` (network
shape), `preprocessing.json` (vocabularies, quantiles, target encoding, schema),
`hyperparameters.json` (the values used) and `metrics.json`. `load_model` takes that folder
or a `model.tar.gz` of it, as SageMaker writes it to S3.
"""

from __future__ import annotations

import gzip
import json
import lzma
import os
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tabtransformer.errors import UserError
from tabtransformer.inference import Predictor
from tabtransformer.model import TabTransformer, TabTransformerConfig
from tabtransformer.preprocessing import TablePreprocessor, TargetEncoder

WEIGHTS = "model.safetensors"
CONFIG = "model_config.json"
PREPROCESSING = "preprocessing.json"
METRICS = "metrics.json"
HYPERPARAMETERS = "hyperparameters.json"
# What a truncated or damaged tarball raises while it is unpacked (gzip, bzip2, xz, tar).
UNREADABLE_ARCHIVE = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)
# Every file in model/ readable by any user (a serving container may run as another user).
ARTIFACT_FILE_MODE = 0o644


@dataclass
class Artifact:
    """Everything in a model folder. `target` is None for a pretraining-only artifact."""

    model: TabTransformer
    preprocessor: TablePreprocessor
    target: TargetEncoder | None
    header: bool
    metrics: dict[str, Any]


def save_artifact(model_dir: Path, artifact: Artifact, hyperparameters: dict[str, Any]) -> None:
    """Write every file into a scratch folder first, then move them in: never half-written."""
    model_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".partial-", dir=model_dir))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in artifact.model.state_dict().items()}
        save_file(state, scratch / WEIGHTS)
        _write_json(scratch / CONFIG, artifact.model.config.to_dict())
        target = artifact.target.to_dict() if artifact.target is not None else None
        _write_json(
            scratch / PREPROCESSING,
            {
                "header": artifact.header,
                "features": artifact.preprocessor.to_dict(),
                "target": target,
            },
        )
        _write_json(scratch / HYPERPARAMETERS, hyperparameters)
        _write_json(scratch / METRICS, artifact.metrics)
        for path in scratch.iterdir():
            os.chmod(path, ARTIFACT_FILE_MODE)  # safetensors writes 0600, json 0644
            os.replace(path, model_dir / path.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=True))


def read_artifact(path: str | os.PathLike) -> Artifact:
    """Read a model folder or a `model.tar.gz` (also a folder holding only the tarball)."""
    path = Path(path)
    if path.is_dir() and not (path / WEIGHTS).exists() and (path / "model.tar.gz").exists():
        path = path / "model.tar.gz"
    if path.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            try:
                with tarfile.open(path) as tar:
                    tar.extractall(tmp, filter="data")
            except UNREADABLE_ARCHIVE as e:
                raise UserError(
                    f"{path} is not a readable model.tar.gz ({e}); it may be truncated or "
                    "damaged: use the model.tar.gz a training job of this image wrote."
                ) from None
            try:
                return _read_folder(Path(tmp))
            except UserError as e:  # name the tarball, not the scratch folder
                raise UserError(str(e).replace(tmp, str(path))) from None
    return _read_folder(path)


def load_model(path: str | os.PathLike) -> Predictor:
    """Load a trained model (folder or `model.tar.gz`) ready to `predict`."""
    artifact = read_artifact(path)
    if artifact.target is None:
        raise UserError(
            f"{path} holds a pretrained model without a prediction head: fine-tune it first "
            "(a training job with this artifact in its 'model' channel)."
        )
    return Predictor(
        artifact.model, artifact.preprocessor, artifact.target, artifact.header, artifact.metrics
    )


def check_servable(folder: Path) -> None:
    """Cheap checks that `folder` holds a fine-tuned model, without loading weights (the
    serving master runs this before forking workers, so it must not start torch threads)."""
    if not (folder / WEIGHTS).exists() and (folder / "model.tar.gz").is_file():
        return  # the workers unpack and check it
    _check_files(folder)
    if json.loads((folder / PREPROCESSING).read_text()).get("target") is None:
        raise UserError(
            f"{folder} holds a pretrained model without a prediction head: "
            "fine-tune it first (a training job with it in its 'model' channel)."
        )


def _check_files(folder: Path) -> None:
    missing = [n for n in (WEIGHTS, CONFIG, PREPROCESSING) if not (folder / n).is_file()]
    if missing:
        raise UserError(f"{folder} is not a TabTransformer model: it lacks {missing}.")


def _read_folder(folder: Path) -> Artifact:
    _check_files(folder)
    try:
        config = TabTransformerConfig(**json.loads((folder / CONFIG).read_text()))
        model = TabTransformer(config)
        model.load_state_dict(load_file(folder / WEIGHTS))
        prep = json.loads((folder / PREPROCESSING).read_text())
        metrics_path = folder / METRICS
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        target = TargetEncoder.from_dict(prep["target"]) if prep["target"] else None
        features = TablePreprocessor.from_dict(prep["features"])
    except (ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
        raise UserError(
            f"{folder} holds a damaged or incompatible TabTransformer model ({e!r:.300}); "
            "use the model.tar.gz a training job of this image wrote."
        ) from None
    return Artifact(model.eval(), features, target, prep["header"], metrics)

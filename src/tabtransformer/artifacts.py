"""The model artifact: save it atomically, load it safely (`load_model` gives a Predictor).

`model/` holds `model.safetensors` (weights: no pickle), `model_config.json` (network
shape), `preprocessing.json` (vocabularies, quantiles, target encoding, schema),
`hyperparameters.json` (the values used) and `metrics.json`. `load_model` takes that folder
or a `model.tar.gz` of it, as SageMaker writes it to S3 (files at the top level) or as
`tar czf model.tar.gz model/` packs it (one top-level folder).
"""

from __future__ import annotations

import gzip
import json
import lzma
import math
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from tabtransformer.errors import UserError
from tabtransformer.inference import Predictor
from tabtransformer.model import Network, TabTransformerConfig, build_network
from tabtransformer.options import ENSEMBLE_HEADS, NUMERIC_EMBEDDINGS
from tabtransformer.preprocessing import TASKS, TablePreprocessor, TargetEncoder

WEIGHTS = "model.safetensors"
CONFIG = "model_config.json"
PREPROCESSING = "preprocessing.json"
METRICS = "metrics.json"
HYPERPARAMETERS = "hyperparameters.json"
REQUIRED_FILES = (WEIGHTS, CONFIG, PREPROCESSING)
# What a truncated or damaged tarball raises while it is listed or unpacked: tar, gzip
# (BadGzipFile, zlib.error, EOFError), xz (LZMAError), bzip2 (OSError, EOFError). An
# OSError with an errno (disk full, permission denied) is told apart: not the bytes' fault.
UNREADABLE_ARCHIVE = (
    tarfile.TarError,
    EOFError,
    zlib.error,
    gzip.BadGzipFile,
    lzma.LZMAError,
    OSError,
)
# Bounds on a model.tar.gz, checked on its member headers before anything is unpacked. A
# training job writes five files, and the weights of even a large TabTransformer are tens to
# a few hundred MB; 4 GiB is ten times that, yet bounds the disk and the decompression time
# (seconds, not hours) that a gzip bomb or a tampered archive can cost every worker.
MAX_ARCHIVE_MEMBERS = 1_000
MAX_UNPACKED_BYTES = 4 * 1024**3
# The kinds of tar member refused (all but regular files and folders), in words.
MEMBER_KINDS: tuple[tuple[Callable[[tarfile.TarInfo], bool], str], ...] = (
    (tarfile.TarInfo.issym, "a symbolic link"),
    (tarfile.TarInfo.islnk, "a hard link"),
    (tarfile.TarInfo.ischr, "a character device"),
    (tarfile.TarInfo.isblk, "a block device"),
    (tarfile.TarInfo.isfifo, "a FIFO"),
)
# Every file in model/ readable by any user (a serving container may run as another user).
ARTIFACT_FILE_MODE = 0o644


@dataclass
class Artifact:
    """Everything in a model folder. `target` is None for a pretraining-only artifact."""

    model: Network
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
    path = _tarball_or_folder(Path(path))
    if path.is_file():
        with unpacked_model_archive(path) as folder:
            return _read_folder(folder)
    return _read_folder(path)


def _tarball_or_folder(path: Path) -> Path:
    if path.is_dir() and not (path / WEIGHTS).exists() and (path / "model.tar.gz").exists():
        return path / "model.tar.gz"
    return path


@contextmanager
def unpacked_model_archive(archive: Path) -> Iterator[Path]:
    """Unpack `archive` (a model.tar.gz) into a temporary folder and yield the folder that
    holds the model files: the top level, or the archive's one top-level folder.

    Bounded (MAX_ARCHIVE_MEMBERS, MAX_UNPACKED_BYTES) and only regular files and folders,
    checked before anything is unpacked. Every problem, also one raised as a UserError in
    the `with` body, is a UserError naming `archive`, never the temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with tarfile.open(archive) as tar:
                members = _bounded_members(tar, archive)
                tar.extractall(tmp, members=members, filter="data")
        except tarfile.FilterError as e:  # its own words name the scratch folder
            raise UserError(
                f"{archive} holds {e.tarinfo.name!r}, which would unpack outside its folder "
                f"({type(e).__name__}); a model.tar.gz may hold only relative names inside it."
            ) from None
        except UNREADABLE_ARCHIVE as e:
            if isinstance(e, OSError) and e.errno is not None:
                raise UserError(f"{archive} cannot be unpacked: {e.strerror}") from None
            raise UserError(
                f"{archive} is not a readable model.tar.gz ({e}); it may be truncated or "
                "damaged: use the model.tar.gz a training job of this image wrote."
            ) from None
        folder = _model_folder(Path(tmp), archive)
        try:
            yield folder
        except UserError as e:
            shown = str(e).replace(str(folder), str(archive)).replace(tmp, str(archive))
            raise UserError(shown) from None


def _bounded_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """The members, read header by header: stop at the first one past a bound (listing a
    gzip stream decompresses it) or of a kind other than a regular file or a folder."""
    members: list[tarfile.TarInfo] = []
    size = 0
    for member in tar:
        members.append(member)
        size += member.size if member.isreg() else 0
        if len(members) > MAX_ARCHIVE_MEMBERS:
            raise UserError(
                f"{archive} holds {len(members)} members or more; a model.tar.gz may hold "
                f"at most {MAX_ARCHIVE_MEMBERS} (a training job writes five files)."
            )
        if size > MAX_UNPACKED_BYTES:
            raise UserError(
                f"{archive} declares {size} bytes or more of files (up to {member.name!r}); "
                f"a model.tar.gz may hold at most {MAX_UNPACKED_BYTES} bytes "
                f"({MAX_UNPACKED_BYTES / 1024**3:g} GiB) unpacked."
            )
        if not (member.isreg() or member.isdir()):
            kind = next((words for is_kind, words in MEMBER_KINDS if is_kind(member)), None)
            raise UserError(
                f"{archive} holds {member.name!r}, {kind or f'of tar type {member.type!r}'}; "
                "a model.tar.gz may hold only regular files and folders."
            )
    return members


def _model_folder(root: Path, archive: Path) -> Path:
    """`root` when it holds the required files, else its only folder when that does."""
    entries = sorted(root.iterdir())
    folders = [p for p in entries if p.is_dir()]
    candidates = [root, *folders] if len(folders) == 1 else [root]
    for folder in candidates:
        if all((folder / name).is_file() for name in REQUIRED_FILES):
            return folder
    found = f"its top level holds {_listing(entries)}"
    if len(folders) == 1:
        found += f" and {folders[0].name}/ holds {_listing(sorted(folders[0].iterdir()))}"
    raise UserError(
        f"{archive} is not a TabTransformer model.tar.gz: {found}; expected "
        f"{', '.join(REQUIRED_FILES)} at its top level (as a training job writes them) or "
        "inside one top-level folder (as `tar czf model.tar.gz model/` packs them)."
    )


def _listing(paths: list[Path], limit: int = 10) -> str:
    names = [p.name + "/" if p.is_dir() else p.name for p in paths]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"[{', '.join(names[:limit])}]{more}" if names else "nothing"


def read_base_artifact(path: Path, header: bool) -> Artifact:
    """The artifact in a job's `model` channel, to fine-tune from: its files' layout (with
    or without a header row) must be the job's."""
    base = read_artifact(path)
    if base.header != header:
        raise UserError(
            "The model in the 'model' channel was trained on files "
            f"{'with' if base.header else 'without'} a header row; set "
            "target_column the same way (empty means no header)."
        )
    return base


def load_model(path: str | os.PathLike) -> Predictor:
    """Load a trained model (folder or `model.tar.gz`) ready to `predict`."""
    artifact = read_artifact(path)
    if artifact.target is None:
        raise UserError(
            f"{path} holds a pretrained model without a prediction head: fine-tune it first "
            "(a training job with this artifact in its 'model' channel)."
        )
    return predictor_of(artifact)


def predictor_of(artifact: Artifact) -> Predictor:
    """The Predictor of an artifact with a prediction head."""
    return Predictor(
        artifact.model, artifact.preprocessor, artifact.target, artifact.header, artifact.metrics
    )


def check_model_files(folder: Path) -> None:
    """A UserError unless `folder` holds the files every model folder has."""
    missing = [n for n in REQUIRED_FILES if not (folder / n).is_file()]
    if missing:
        raise UserError(f"{folder} is not a TabTransformer model: it lacks {missing}.")


def _read_folder(folder: Path) -> Artifact:
    check_model_files(folder)
    try:
        config = network_config(json.loads((folder / CONFIG).read_text()))
        model = build_network(config)
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


# --- start-up validation of a model folder (the serving master runs this) -------------------


@dataclass(frozen=True)
class Rule:
    """A check of one JSON value, and the words for what it allows."""

    test: Callable[[Any], bool]
    allowed: str


def _integer(low: int, high: int) -> Rule:
    return Rule(
        lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high,
        f"an integer from {low} to {high}",
    )


def _number(low: float, high: float) -> Rule:
    return Rule(
        lambda v: (
            isinstance(v, (int, float))
            and not isinstance(v, bool)
            and math.isfinite(v)
            and low <= v <= high
        ),
        f"a finite number from {low:g} to {high:g}",
    )


def _list_of(item: Rule, max_length: int, min_length: int = 0) -> Rule:
    return Rule(
        lambda v: (
            isinstance(v, list)
            and min_length <= len(v) <= max_length
            and all(item.test(x) for x in v)
        ),
        f"a list of {min_length} to {max_length} items, each {item.allowed}",
    )


TEXT = Rule(lambda v: isinstance(v, str), "a string")
LABEL = Rule(lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool), "a label")
FINITE = _number(-math.inf, math.inf)
MAX_COLUMNS = 100_000
# Bounds on what a training job of this image can write, with room to spare: a tampered
# value (n_blocks 10**6) must fail at once rather than build a model for hours.
CONFIG_RULES = {
    "cardinalities": _list_of(_integer(2, 10**8), MAX_COLUMNS),
    "n_continuous": _integer(0, MAX_COLUMNS),
    "n_outputs": _integer(1, 10**6),
    "dim": _integer(1, 4096),
    "n_blocks": _integer(0, 64),
    "n_heads": _integer(1, 4096),
    "frac_shared_embed": _number(0.0, 1.0),
    "attn_dropout": _number(0.0, 1.0),
    "mlp_dropout": _number(0.0, 1.0),
    "continuous_norm": Rule(lambda v: v in ("layer", "none"), "'layer' or 'none'"),
    "numeric_embedding": Rule(
        lambda v: v in NUMERIC_EMBEDDINGS, f"one of {tuple(NUMERIC_EMBEDDINGS)}"
    ),
    "numeric_bin_edges": _list_of(_list_of(FINITE, 10**4, min_length=2), MAX_COLUMNS),
    "frequency_init_scale": Rule(
        lambda v: _number(0.0, 10**6).test(v) and v > 0, "a positive number up to 1e+06"
    ),
    "ensemble_size": _integer(1, 1024),
    "ensemble_head": Rule(lambda v: v in ENSEMBLE_HEADS, f"one of {ENSEMBLE_HEADS}"),
    "mlp_hidden_cap": _integer(0, 10**6),
    "folds": _integer(1, 64),
    "numeric_blocks": _integer(-1, 64),
    "numeric_skip": _list_of(_integer(0, MAX_COLUMNS), MAX_COLUMNS),
}
# Keys an older model_config.json holds where a newer one has another (`network_config`).
LEGACY_CONFIG_RULES = {"numeric_attention": Rule(lambda v: isinstance(v, bool), "true or false")}
FEATURES_RULES = {
    "feature_names": _list_of(TEXT, MAX_COLUMNS, min_length=1),
    "categorical": Rule(lambda v: isinstance(v, list), "a list"),
    "numeric": Rule(lambda v: isinstance(v, list), "a list"),
    "continuous_bins": _integer(0, 10**6),
    "numeric_bins": _integer(0, 10**4),
}
# Keys that older artifacts lack (before numeric tokens, the decision threshold, numeric
# embeddings that skip the Transformer, or flag columns whose tokens skip it). Every
# model_config.json key is optional already (a missing one takes the config's default:
# frequency_init_scale 0.01, what older artifacts were initialised with).
OPTIONAL_KEYS = frozenset(
    {"numeric_bins", "bin_edges", "threshold", "numeric_blocks", "numeric_skip", "flag"}
)


CATEGORICAL_RULES = {"name": TEXT, "categories": _list_of(TEXT, 10**8)}
NUMERIC_RULES = {
    "name": TEXT,
    "quantiles": _list_of(FINITE, 10**6),
    "median": FINITE,
    "bin_edges": Rule(
        lambda v: v is None or _list_of(FINITE, 10**4, min_length=2).test(v),
        "null or a list of finite edges",
    ),
    "flag": Rule(lambda v: isinstance(v, bool), "true or false"),
}
TARGET_RULES = {
    "task": Rule(lambda v: v in TASKS, f"one of {list(TASKS)}"),
    "classes": Rule(lambda v: v is None or _list_of(LABEL, 10**6).test(v), "null or labels"),
    "mean": FINITE,
    "std": _number(1e-300, math.inf),
    "threshold": Rule(lambda v: v is None or _number(0.0, 1.0).test(v), "null or in [0, 1]"),
}


def network_config(data: dict[str, Any]) -> TabTransformerConfig:
    """The network config that model_config.json holds. Artifacts written before numeric
    tokens could leave after some blocks say numeric_attention (true: every block, false:
    none) where newer ones say numeric_blocks."""
    data = dict(data)
    if "numeric_attention" in data:
        data.setdefault("numeric_blocks", -1 if data.pop("numeric_attention") else 0)
    return TabTransformerConfig(**data)


def validate_artifact(path: Path) -> None:
    """Check a model folder (or `model.tar.gz`) against its schema and sane bounds without
    building the network on real memory or starting torch threads; a problem is a
    UserError naming the file and the key. The serving master calls this before forking."""
    path = _tarball_or_folder(path)
    if path.is_file():
        with unpacked_model_archive(path) as folder:
            _validate_folder(folder, shown_as=path)
        return
    _validate_folder(path, shown_as=path)


def _validate_folder(folder: Path, shown_as: Path) -> None:
    check_model_files(folder)
    config = _json_object(folder / CONFIG, shown_as)
    prep = _json_object(folder / PREPROCESSING, shown_as)
    if (folder / METRICS).is_file():
        _json_object(folder / METRICS, shown_as)
    _apply(CONFIG_RULES | LEGACY_CONFIG_RULES, config, f"{CONFIG} ", required=False)
    if config.get("dim", 32) % config.get("n_heads", 8):
        raise _damaged(shown_as, f"{CONFIG}: 'n_heads' must divide 'dim'")
    if not isinstance(prep.get("header"), bool):
        raise _damaged(shown_as, f"{PREPROCESSING}: 'header' must be true or false")
    features = prep.get("features")
    _apply(FEATURES_RULES, features, f"{PREPROCESSING} 'features' ")
    for i, column in enumerate(features["categorical"]):
        _apply(CATEGORICAL_RULES, column, f"{PREPROCESSING} 'categorical'[{i}] ")
    for i, column in enumerate(features["numeric"]):
        _apply(NUMERIC_RULES, column, f"{PREPROCESSING} 'numeric'[{i}] ")
        if np.any(np.diff(column["quantiles"]) < 0):
            raise _damaged(shown_as, f"{PREPROCESSING}: quantiles of {column['name']!r} decrease")
    if prep.get("target") is None:
        raise UserError(
            f"{shown_as} holds a pretrained model without a prediction head: "
            "fine-tune it first (a training job with it in its 'model' channel)."
        )
    _apply(TARGET_RULES, prep["target"], f"{PREPROCESSING} 'target' ")
    try:
        preprocessor = TablePreprocessor.from_dict(features)
        target = TargetEncoder.from_dict(prep["target"])
        network = network_config(config)
        _check_consistent(network, preprocessor, target)
        _check_weights(folder / WEIGHTS, network)
    except (UserError, ValueError, TypeError, SafetensorError, OSError) as e:
        raise _damaged(shown_as, str(e)) from None


def _json_object(path: Path, shown_as: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:
        raise _damaged(shown_as, f"{path.name} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise _damaged(shown_as, f"{path.name} must hold a JSON object")
    return data


def _apply(rules: dict[str, Rule], data: Any, where: str, required: bool = True) -> None:
    """Every key of `data` must have a rule and pass it; with `required`, every rule's key
    must be present."""
    if not isinstance(data, dict):
        raise UserError(f"{where}must be a JSON object")
    unknown = sorted(set(data) - set(rules))
    missing = sorted(set(rules) - set(data) - OPTIONAL_KEYS) if required else []
    if unknown or missing:
        raise UserError(f"{where}has unknown keys {unknown} or lacks {missing}")
    for key, value in data.items():
        if not rules[key].test(value):
            raise UserError(f"{where}key {key!r}: {value!r:.80} is not {rules[key].allowed}")


def _damaged(shown_as: Path, problem: str) -> UserError:
    return UserError(
        f"{shown_as} holds a damaged or tampered TabTransformer model: {problem}. "
        "Use the model.tar.gz a training job of this image wrote."
    )


def _check_consistent(
    config: TabTransformerConfig, preprocessor: TablePreprocessor, target: TargetEncoder
) -> None:
    names = preprocessor.feature_names
    columns = [c.name for c in preprocessor.categorical] + [c.name for c in preprocessor.numeric]
    if len(set(names)) != len(names) or sorted(columns) != sorted(names):
        raise UserError(f"{PREPROCESSING}: the columns do not match 'feature_names'")
    classes = target.classes or []
    if target.task != "regression" and (len(classes) < 2 or len(set(classes)) != len(classes)):
        raise UserError(f"{PREPROCESSING}: a classifier needs two or more distinct classes")
    expected = {
        "cardinalities": preprocessor.cardinalities,
        "n_continuous": len(preprocessor.numeric),
        "n_outputs": target.n_outputs,
    }
    for key, value in expected.items():
        if getattr(config, key) != value:
            raise UserError(f"{CONFIG} {key!r} does not match {PREPROCESSING}")


def _check_weights(path: Path, config: TabTransformerConfig) -> None:
    """Tensor names and shapes in the safetensors header against the network the config
    builds on the meta device (no memory, no kernels, no threads)."""
    with torch.device("meta"):
        expected = {k: list(v.shape) for k, v in build_network(config).state_dict().items()}
    try:
        with safe_open(path, framework="np") as weights:
            found = {k: list(weights.get_slice(k).get_shape()) for k in weights.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as e:
        raise UserError(f"{WEIGHTS} cannot be read ({e})") from None
    if found != expected:
        wrong = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
        raise UserError(
            f"{WEIGHTS} does not match {CONFIG}: tensor {wrong[0]!r} has shape "
            f"{found.get(wrong[0])}, the config needs {expected.get(wrong[0])}"
        )

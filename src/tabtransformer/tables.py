"""The tables a training job learns from: read from its channels in passes, fitted, and
encoded once per host (`load_tables`).

Channels are streamed in chunks (`streaming`), never held whole. On the first process of
each host (the others wait and map the result):
1. the target column is read and summarised (`TargetStatistics`); the target encoding is
   fitted on the hosts' agreed statistics;
2. the labels are encoded and, without a `validation` channel, a seeded share of the rows
   is held out; the preprocessing statistics (`FeatureStatistics`) are gathered on the
   training rows and the `unlabeled` rows; every process fits the same preprocessor;
3. every channel is encoded into compact arrays in the host's scratch folder
   (`host_store`), which every process of the host memory-maps.

Channels (`S3DistributionType` in inputdataconfig.json): FullyReplicated (the default)
gives every host the same files, so the first host's statistics stand for all; with
ShardedByS3Key each host gets its own files, the hosts' statistics are merged (an
all-gather), every host trains on its own rows (`World.rows_per_rank`), and the validation
rows of all hosts are gathered to every process so that early stopping agrees.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from tabtransformer.channels import read_json_config, separator_advice
from tabtransformer.distributed import World
from tabtransformer.errors import UserError
from tabtransformer.host_store import HostStore, MappedRows, code_dtype
from tabtransformer.paths import SageMakerPaths
from tabtransformer.preprocessing import TablePreprocessor, TargetEncoder, TooManyClasses
from tabtransformer.streaming import Channel, labelled_channel, unlabeled_channel
from tabtransformer.table_statistics import FeatureStatistics, TargetStatistics

log = logging.getLogger(__name__)
SHARDED = "ShardedByS3Key"


@dataclass(frozen=True)
class TableSettings:
    """What decides how the tables are read, labelled, split and binned: the channels
    present, whether the job only pretrains, and the hyperparameters of the same names."""

    channels: frozenset[str] = frozenset({"training"})
    pretrain_only: bool = False
    target_column: str = ""
    task: str = "auto"
    max_classes: int = 20
    validation_fraction: float = 0.2
    seed: int = 0
    numeric_bins: int = 0  # > 0: each numeric column's quantile bin edges (numeric tokens)

    @property
    def header(self) -> bool:
        """Files have a header row exactly when target_column names the target."""
        return bool(self.target_column)

    @property
    def labelled(self) -> bool:
        """Whether the job reads labels (it fine-tunes)."""
        return not self.pretrain_only

    @classmethod
    def from_hyperparameters(
        cls, hp: Mapping[str, Any], channels: frozenset[str], numeric_bins: int
    ) -> TableSettings:
        pretrain_only = hp["pretrain_only"] or "training" not in channels
        return cls(
            channels,
            pretrain_only,
            hp["target_column"],
            hp["task"],
            hp["max_classes"],
            hp["validation_fraction"],
            hp["seed"],
            numeric_bins,
        )


@dataclass(frozen=True)
class Labelled:
    """The labelled rows of a fine-tuning job and their target encoding; `rows_per_rank`
    is set when each host trains on its own rows (a ShardedByS3Key training channel):
    every process then takes this many rows an epoch from its host's rows."""

    train: MappedRows
    valid: MappedRows
    target: TargetEncoder
    rows_per_rank: int | None = None


@dataclass(frozen=True)
class Tables:
    """The fitted preprocessor; every feature row (training, then unlabeled), encoded; the
    labelled rows (None: pretraining only); and the feature rows over all hosts."""

    pre: TablePreprocessor
    features: MappedRows
    labelled: Labelled | None
    n_rows_all_hosts: int


def sharded_channels(paths: SageMakerPaths) -> set[str]:
    """The channels whose S3DistributionType is ShardedByS3Key (each host its own files)."""
    config = read_json_config(paths.input_data_config, {})
    return {
        name
        for name, spec in config.items()
        if isinstance(spec, dict) and spec.get("S3DistributionType") == SHARDED
    }


@dataclass
class HostReader:
    """What the first process of a host reads and keeps between the passes."""

    paths: SageMakerPaths
    settings: TableSettings
    base_names: list[str] | None
    store: HostStore
    train: Channel | None = None
    valid: Channel | None = None
    unlabeled: Channel | None = None
    labels: np.ndarray | None = None
    train_rows: np.ndarray | None = None  # training-channel rows trained on (after hold-out)
    valid_rows: np.ndarray | None = None  # training-channel rows held out
    encoder: TargetEncoder | None = None  # the agreed target encoding (labelled jobs)

    def open(self) -> tuple[list[str], list[str] | None, TargetStatistics | None]:
        """Open the channels; the feature names, categorical columns and target summary."""
        s = self.settings
        if "training" in s.channels:
            self.train = labelled_channel(self.paths.channel("training"), s.target_column)
        names = self.train.names if self.train else self.base_names
        if "unlabeled" in s.channels:
            self.unlabeled = unlabeled_channel(self.paths.channel("unlabeled"), s.header, names)
        if s.labelled and "validation" in s.channels:
            self.valid = labelled_channel(self.paths.channel("validation"), s.target_column)
            if self.valid.names != self.train.names:
                raise UserError(
                    f"The validation channel has the feature columns {self.valid.names} "
                    f"but the training channel has {self.train.names}."
                )
        source = self.train or self.unlabeled
        target = None
        if self.train is not None:
            target = TargetStatistics(self.train.target_column)
            for chunk in self.train.targets():
                target.update(chunk)
            target.recount_labels(self.train.targets())
            if target.n_rows == 0:
                files = [p.name for p in self.train.files.files]
                raise UserError(f"The files {files} contain no data rows.")
            log.info(
                "training channel: %d rows, %d feature columns",
                target.n_rows,
                len(self.train.names),
            )
        return source.names, source.categorical, target

    def fit(self, encoder: TargetEncoder | None, fitting: bool) -> dict[str, Any]:
        """Encode the labels, hold out validation rows, and (`fitting`) gather the
        preprocessing statistics of the training and unlabeled rows."""
        n_train = 0
        if self.train is not None:
            if encoder is not None:
                self.labels = np.concatenate([encoder.encode(t) for t in self.train.targets()])
                n_train = len(self.labels)
            else:
                n_train = sum(len(t) for t in self.train.targets())
            self.train_rows = np.arange(n_train, dtype=position_dtype(n_train))
            if encoder is not None and self.valid is None:
                self.train_rows, self.valid_rows = split_validation(
                    self.labels, encoder, self.settings
                )
        result: dict[str, Any] = {
            "n_train": n_train,
            "n_trained": len(self.train_rows) if self.train_rows is not None else 0,
            "n_held_out": len(self.valid_rows) if self.valid_rows is not None else 0,
        }
        if not fitting:
            return result
        categorical = (self.train or self.unlabeled).categorical
        if self.train is not None:
            keep = np.zeros(n_train, dtype=bool)
            keep[self.train_rows] = True
            result["training"] = statistics(self.train, categorical, keep)
        if self.unlabeled is not None:
            result["unlabeled"] = statistics(self.unlabeled, categorical, None)
        return result

    def encode(self, pre: TablePreprocessor, gather_valid: bool) -> dict[str, Any]:
        """Encode every channel into the host store; the row counts (and, `gather_valid`,
        the validation rows for the other hosts)."""
        sources = [c for c in (self.train, self.unlabeled) if c is not None]
        n_features = encode_into(self.store, "features", pre, sources)
        if self.labels is not None:
            self.store.save("labels", self.labels)
        if self.train_rows is not None:
            self.store.save("train_rows", self.train_rows)
        if self.valid_rows is not None:
            self.store.save("valid_rows", self.valid_rows)
        if self.valid is not None:
            encode_into(self.store, "validation", pre, [self.valid])
            labels = [self.encoder.encode(t) for t in self.valid.targets()]
            self.store.save("validation_labels", np.concatenate(labels))
        n_train = len(self.train_rows) if self.train_rows is not None else 0
        result: dict[str, Any] = {
            "n_features": n_features,
            "n_train": n_train,
            "n_rows": n_features - (len(self.valid_rows) if self.valid_rows is not None else 0),
        }
        if gather_valid:
            result["valid"] = open_valid(self.store, self.valid is not None).compact()
        return result


def statistics(
    channel: Channel, categorical: list[str] | None, keep: np.ndarray | None
) -> FeatureStatistics:
    """A channel's preprocessing statistics over its rows where `keep` (None: all)."""
    stats = FeatureStatistics.start(channel.names, categorical)
    offset = 0
    for chunk in channel.features():
        rows = chunk if keep is None else chunk[keep[offset : offset + len(chunk)]]
        offset += len(chunk)
        stats.update(rows)
    for name in stats.needs_recount():
        stats.recount(name, _kept(channel.features([name]), keep))
    return stats


def _kept(chunks: Iterator[pd.DataFrame], keep: np.ndarray | None) -> Iterator[pd.DataFrame]:
    offset = 0
    for chunk in chunks:
        yield chunk if keep is None else chunk[keep[offset : offset + len(chunk)]]
        offset += len(chunk)


def encode_into(store: HostStore, name: str, pre: TablePreprocessor, sources: list[Channel]) -> int:
    """Encode the rows of `sources`, one after the other, into `<name>_codes` (compact
    integers) and `<name>_numbers` (float32); returns the number of rows."""
    n_rows = sum(s.files.n_rows() for s in sources)  # known from an earlier pass, as a rule
    width = len(pre.cardinalities)
    codes = store.create(f"{name}_codes", (n_rows, width), code_dtype(pre.cardinalities))
    numbers = store.create(f"{name}_numbers", (n_rows, len(pre.numeric)), np.dtype(np.float32))
    start = 0
    for source in sources:
        for chunk in source.features():
            chunk_codes, chunk_numbers = pre.transform(chunk)
            codes[start : start + len(chunk)] = chunk_codes
            numbers[start : start + len(chunk)] = chunk_numbers
            start += len(chunk)
    codes.flush()
    numbers.flush()
    del codes, numbers
    return n_rows


def open_valid(store: HostStore, own_channel: bool) -> MappedRows:
    """The validation rows in the host store: the `validation` channel's, or the rows held
    out of the training channel."""
    if own_channel:
        return MappedRows(
            store.load("validation_codes"),
            store.load("validation_numbers"),
            store.load("validation_labels"),
        )
    features = MappedRows(
        store.load("features_codes"), store.load("features_numbers"), store.load("labels")
    )
    return features.subset(store.load("valid_rows"))


def position_dtype(n_rows: int) -> np.dtype:
    """Row positions as int32 where they fit (half the memory of int64)."""
    return np.dtype(np.int32 if n_rows < 2**31 else np.int64)


def split_validation(
    labels: np.ndarray, encoder: TargetEncoder, settings: TableSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded hold-out of row positions, stratified by class when every class has two rows
    or more (classes in the order of their text, as the labels' text would sort)."""
    n = len(labels)
    if n < 2:
        raise UserError(
            f"The training channel has {n} row(s): too few to hold out "
            "a validation share. Add rows or a 'validation' channel."
        )
    stratify = None
    if encoder.task != "regression":
        text_rank = np.argsort(np.argsort([str(c) for c in encoder.classes], kind="stable"))
        strata = text_rank[labels]
        counts = np.bincount(strata)
        if counts[counts > 0].min() >= 2:
            stratify = strata
    rows = np.arange(n)
    try:
        train, valid = train_test_split(
            rows, test_size=settings.validation_fraction, random_state=settings.seed,
            stratify=stratify,
        )  # fmt: skip
    except ValueError:  # too few rows per class for a stratified split
        train, valid = train_test_split(
            rows, test_size=settings.validation_fraction, random_state=settings.seed
        )
    log.info(
        "no validation channel: held out %d of %d rows (seed %d)",
        len(valid),
        n,
        settings.seed,
    )
    dtype = position_dtype(n)
    return np.sort(train).astype(dtype), np.sort(valid).astype(dtype)


def merged(parts: list[Any], sharded: bool) -> Any:
    """One statistics object from the hosts' parts: the first host's when every host read
    the same files, else all of them merged."""
    if not sharded:
        return parts[0]
    total = parts[0]
    for part in parts[1:]:
        total = total.merged(part)
    return total


def check_sharding(
    paths: SageMakerPaths, channels: frozenset[str], world: World, objective: str
) -> bool:
    """Whether pretraining may run: it reads every feature row on every process, so sharded
    rows refuse an objective asked for (a UserError) and rule out `auto`'s."""
    sharded = sharded_channels(paths) & channels & {"training", "unlabeled"}
    if not (sharded and world.distributed):
        return True
    if objective not in ("none", "auto"):
        raise UserError(
            f"The channel(s) {sorted(sharded)} are ShardedByS3Key, and pretraining "
            f"(pretrain_objective={objective}) needs every row on every host: use "
            "FullyReplicated for them, or pretrain_objective=none."
        )
    return False


def check_rows_per_process(counts: list[tuple[int, int]], sharded: bool, world: World) -> None:
    """Every process needs a training row an epoch (with none it has no batch: the epoch
    loop divides by zero, or the others wait for it). `counts`: each host's (training rows,
    rows held out for validation), known alike to every process, so every process raises
    the same UserError. Shared rows are split among all processes; a host's own
    (ShardedByS3Key) rows among that host's processes."""
    needed = world.per_host if sharded else world.size
    for host, (n_rows, held_out) in enumerate(counts if sharded else counts[:1], start=1):
        if n_rows >= needed:
            continue
        source = "The training channel holds"
        if sharded:
            source = f"Host {host}'s ShardedByS3Key training files hold"
        held = f" (after {held_out} held out for validation)" if held_out else ""
        advice = " (or a 'validation' channel, so that none are held out)" if held_out else ""
        raise UserError(
            f"{source} {n_rows} training row(s){held}, fewer than the {needed} training "
            f"processes that share them ({world.size} in all, {world.per_host} per host): "
            f"every process needs at least one row an epoch. Add training rows{advice}, or "
            "run fewer processes (PROCESSES_PER_HOST, or fewer instances or GPUs)."
        )


@dataclass(frozen=True)
class Layout:
    """Which channels each host reads on its own (ShardedByS3Key), and where the
    validation rows come from: a `validation` channel (`own_valid`) or the hold-out, and
    whether they are gathered from every host (`gather_valid`)."""

    sharded: frozenset[str]
    own_valid: bool
    gather_valid: bool

    @classmethod
    def of(cls, paths: SageMakerPaths, settings: TableSettings) -> Layout:
        sharded = frozenset(sharded_channels(paths) & settings.channels)
        own_valid = settings.labelled and "validation" in settings.channels
        gather_valid = settings.labelled and (
            "validation" in sharded if own_valid else "training" in sharded
        )
        return cls(sharded, own_valid, gather_valid)


def load_tables(
    paths: SageMakerPaths,
    settings: TableSettings,
    base: TablePreprocessor | None,
    world: World,
    scratch: Path,
) -> Tables:
    """Read, fit and encode the channels present (see the module docstring).

    `base`: the preprocessor of a base model (its schema is checked and it is reused);
    `scratch`: this host's folder for the encoded arrays."""
    layout = Layout.of(paths, settings)
    sharded = layout.sharded
    base_names = base.feature_names if base else None
    reader = HostReader(paths, settings, base_names, HostStore(scratch / "encoded"))
    opened = world.on_hosts(reader.open)
    names, categorical, _ = opened[0]
    for host, (other, _, _) in enumerate(opened[1:], start=2):
        if other != names:
            raise UserError(
                f"Host {host} reads the feature columns {other} but host 1 reads {names}: "
                "every host's files must share one column layout."
            )
    encoder = None
    if settings.labelled:
        target = merged([t for _, _, t in opened], "training" in sharded)
        target.check_present(settings.target_column or "column 0")
        try:
            encoder = target.target_encoder(settings.task, settings.max_classes)
        except TooManyClasses as error:
            folder = paths.channel("training")
            raise UserError(
                f"Training channel {folder}: {error}{separator_advice(folder)}"
            ) from None
        describe_target(encoder)
    reader.encoder = encoder
    fitted = world.on_hosts(lambda: reader.fit(encoder, base is None))
    if encoder is not None:
        check_rows_per_process(
            [(f["n_trained"], f["n_held_out"]) for f in fitted], "training" in sharded, world
        )
    if base is not None:
        base.check_schema(pd.DataFrame(columns=names), categorical)
        pre = base
    else:
        parts = [
            merged([f[c] for f in fitted], c in sharded)
            for c in ("training", "unlabeled")
            if c in fitted[0]
        ]
        pre = merged(parts, True).preprocessor(numeric_bins=settings.numeric_bins)
    log.info("%s", pre.describe())
    state = json.dumps(pre.to_dict(), sort_keys=True).encode()
    log.info("preprocessing state sha256=%s", hashlib.sha256(state).hexdigest())
    encoded = world.on_hosts(lambda: reader.encode(pre, layout.gather_valid))
    return open_tables(reader, pre, encoded, layout, world)


def describe_target(encoder: TargetEncoder) -> None:
    label_info = (
        f"classes {encoder.classes}"
        if encoder.classes
        else f"target mean {encoder.mean:.6g}, std {encoder.std:.6g}"
    )
    log.info("task: %s (%s)", encoder.task, label_info)


def open_tables(
    reader: HostReader,
    pre: TablePreprocessor,
    encoded: list[dict[str, Any]],
    layout: Layout,
    world: World,
) -> Tables:
    """Map the host's encoded arrays (written by its first process) as the job's tables."""
    store, encoder = reader.store, reader.encoder
    host = encoded[world.host_index]
    features_all = MappedRows(
        store.load("features_codes"),
        store.load("features_numbers"),
        store.load("labels") if encoder is not None else None,
    )
    n_train_channel = len(store.load("labels")) if encoder is not None else host["n_train"]
    train_rows = store.load("train_rows") if store.path("train_rows").is_file() else None
    n_features = host["n_features"]
    unlabeled_rows = np.arange(n_train_channel, n_features, dtype=position_dtype(n_features))
    feature_rows = np.concatenate([train_rows, unlabeled_rows]) if train_rows is not None else None
    features = replace(features_all, target_array=None)  # training and unlabeled rows
    features = features.subset(feature_rows) if feature_rows is not None else features
    labelled = None
    if encoder is not None:
        train = features_all.subset(train_rows)
        if layout.gather_valid:
            parts = [e["valid"] for e in encoded]
            valid = MappedRows(*(np.concatenate(arrays) for arrays in zip(*parts, strict=True)))
        else:
            valid = open_valid(store, layout.own_valid)
        rows_per_rank = None
        if "training" in layout.sharded and world.distributed:
            largest = max(e["n_train"] for e in encoded)
            rows_per_rank = -(-largest // world.per_host)
            log.info(
                "sharded training channel: hosts hold %s training rows; every process "
                "takes %d rows an epoch",
                [e["n_train"] for e in encoded],
                rows_per_rank,
            )
        labelled = Labelled(train, valid, encoder, rows_per_rank)
    n_rows = sum(e["n_rows"] for e in encoded) if layout.sharded else host["n_rows"]
    return Tables(pre, features, labelled, n_rows)

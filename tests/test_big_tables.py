"""Big tables: channels streamed in chunks give what the whole-table reader gives, errors
still name file and line, one encoded copy per host is memory-mapped by its processes, and
ShardedByS3Key hosts agree on the fitted preprocessing (real gloo processes on loopback)."""

from __future__ import annotations

import gzip
import json
import multiprocessing
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST, Job, free_port, make_table
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_readers import read_labelled
from sklearn.model_selection import train_test_split
from test_distributed import start
from test_input_robustness import csv_tables, write_csv

from tabtransformer import load_model, streaming
from tabtransformer import table_statistics as statistics_module
from tabtransformer.distributed import World
from tabtransformer.errors import UserError
from tabtransformer.host_store import HostStore, MappedRows, code_dtype
from tabtransformer.paths import SageMakerPaths
from tabtransformer.plan import JobPlan, TableFacts
from tabtransformer.preprocessing import SAMPLE_SIZE, NumberSample, TablePreprocessor
from tabtransformer.streaming import labelled_channel
from tabtransformer.tables import (
    TableSettings,
    check_sharding,
    encode_into,
    load_tables,
    statistics,
)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Chunks of 7 rows, so that every table here spans several chunks and files."""
    monkeypatch.setattr(streaming, "CHUNK_ROWS", 7)


def write_channel(folder: Path, table: pd.DataFrame, header: bool) -> None:
    """The table over three files: plain CSV, gzip CSV and Parquet."""
    folder.mkdir(parents=True)
    parts = np.array_split(np.arange(len(table)), 3)
    table.iloc[parts[0]].to_csv(folder / "a.csv", header=header, index=False)
    text = table.iloc[parts[1]].to_csv(header=header, index=False).encode()
    (folder / "b.csv.gz").write_bytes(gzip.compress(text))
    part = table.iloc[parts[2]].astype(str).where(table.iloc[parts[2]].notna(), None)
    if not header:
        part.columns = [str(i) for i in range(part.shape[1])]
    part.to_parquet(folder / "c.parquet", index=False)


@pytest.mark.parametrize("header", [False, True])
@pytest.mark.parametrize("numeric_bins", [0, 8])
def test_streamed_read_gives_the_codes_of_the_whole_table_reader(
    tmp_path: Path, header: bool, numeric_bins: int
):
    table = make_table("binary", n=100)
    table.loc[[3, 40, 77], "color"] = np.nan  # missing categories, in every file
    folder = tmp_path / "training"
    write_channel(folder, table, header)

    whole = read_labelled(folder, "label" if header else "")
    expected = TablePreprocessor.fit(whole.features, None, 0, numeric_bins)
    expected_codes, expected_numbers = expected.transform(whole.features)

    channel = labelled_channel(folder, "label" if header else "")
    pre = statistics(channel, None, None).preprocessor(0, numeric_bins)
    assert pre.to_dict() == expected.to_dict()
    store = HostStore(tmp_path / "store")
    assert encode_into(store, "t", pre, [channel]) == 100
    codes, numbers = store.load("t_codes"), store.load("t_numbers")
    assert isinstance(codes, np.memmap) and codes.dtype == np.uint8
    assert np.array_equal(codes, expected_codes)
    np.testing.assert_array_equal(numbers, expected_numbers)
    chunks = pd.concat(channel.features())
    assert chunks.index.tolist() == whole.features.index.tolist()  # (file, line) kept


def test_encoding_reuses_the_row_count_of_an_earlier_pass(tmp_path: Path, monkeypatch):
    """The statistics pass counts the rows; encoding does not read the files again to
    count them (one pass fewer over a big CSV)."""
    table = make_table("binary", n=50)
    write_channel(tmp_path / "training", table, header=True)
    channel = labelled_channel(tmp_path / "training", "label")
    pre = statistics(channel, None, None).preprocessor(0, 0)
    passes = []
    real = streaming._csv_chunks
    monkeypatch.setattr(streaming, "_csv_chunks", lambda *a: passes.append(a[-1]) or real(*a))
    assert encode_into(HostStore(tmp_path / "store"), "t", pre, [channel]) == 50
    assert passes == [channel.names] * 2  # the two CSV files, once: the encoding pass
    fresh = labelled_channel(tmp_path / "training", "label")
    assert fresh.files.n_rows() == 50  # never read before: counted over one column


def test_load_tables_holds_out_the_seeded_stratified_share(tmp_path: Path):
    job = Job(tmp_path / "opt_ml")
    table = make_table("multiclass", n=150)
    job.channel("training", table)
    tables = load_tables(
        SageMakerPaths(job.base), TableSettings(), None, World(), tmp_path / "scratch",
    )  # fmt: skip
    labelled = tables.labelled
    assert (len(labelled.train), len(labelled.valid)) == (120, 30)
    assert isinstance(labelled.train.codes_array, np.memmap)
    held_out = train_test_split(  # the split of the whole-table reader, by label text
        np.arange(150), test_size=0.2, random_state=0, stratify=table["label"].astype(str)
    )[1]
    assert labelled.valid.index.tolist() == sorted(held_out)
    batch = labelled.train.rows(torch.tensor([0, 5]))
    assert batch.codes.dtype == torch.int64 and batch.target.shape == (2,)


def test_errors_in_a_later_file_and_chunk_name_its_file_and_line(tmp_path: Path):
    table = make_table("binary", n=60)
    folder = tmp_path / "training"
    folder.mkdir()
    table.iloc[:30].to_csv(folder / "a.csv", header=False, index=False)
    rows = table.iloc[30:].to_csv(header=False, index=False).splitlines()
    rows[17] = rows[17] + ",extra"
    (folder / "b.csv").write_text("\n".join(rows) + "\n")
    channel = labelled_channel(folder, "")
    with pytest.raises(UserError, match=r"b\.csv, line 18: expected 5 columns but found 6"):
        statistics(channel, None, None)

    rows[17] = "yes,red,abc,circle,1.0"  # size must be a number (categorical_index below)
    (folder / "b.csv").write_text("\n".join(rows) + "\n")
    channel = labelled_channel(folder, "")
    with pytest.raises(UserError, match=r"file b\.csv, line 18, column 'c2': 'abc' is not"):
        statistics(channel, ["c1", "c3"], None)


def test_damaged_gzip_and_layout_mismatch_name_the_file(tmp_path: Path):
    folder = tmp_path / "training"
    folder.mkdir()
    make_table(n=30).to_csv(folder / "a.csv", header=False, index=False)
    make_table(n=30).iloc[:, :4].to_csv(folder / "b.csv", header=False, index=False)
    with pytest.raises(UserError, match=r"b\.csv has 4 columns .*share one column layout"):
        labelled_channel(folder, "")
    (folder / "b.csv").unlink()
    rows = "".join(f"yes,red,{i},circle,{i / 7:.5f}\n" for i in range(200000))
    whole = gzip.compress(rows.encode())
    (folder / "b.csv.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UserError, match=r"b\.csv\.gz is a truncated or damaged gzip"):
        statistics(labelled_channel(folder, ""), None, None)


def test_quantiles_come_from_a_bounded_seeded_sample_beyond_its_size():
    values = np.random.default_rng(1).normal(size=3 * SAMPLE_SIZE)
    samples = []
    for _ in range(2):
        sample = NumberSample()
        for part in np.array_split(values, 5):
            sample.add(part, np.random.default_rng(len(part)))
        samples.append(sample.values)
    assert len(samples[0]) == SAMPLE_SIZE and np.array_equal(samples[0], samples[1])
    assert abs(np.median(samples[0]) - np.median(values)) < 0.02  # a uniform sample


def test_codes_take_the_smallest_integer_type_that_fits():
    assert code_dtype([3, 256]) == np.uint8
    assert code_dtype([257]) == np.int16
    assert code_dtype([40000]) == np.int32


def test_ranks_of_hosts_with_different_row_counts_take_equal_shards():
    """ShardedByS3Key: host 1 holds 10 rows, host 2 holds 7; two processes per host."""
    orders = {0: torch.randperm(10), 1: torch.randperm(7)}  # shared by a host's processes
    shards = {}
    for rank in range(4):
        host = rank // 2
        world = World(rank, 4, rank % 2, per_host=2)
        shards[rank] = world.shard(orders[host], rows_per_rank=5)
    assert {len(s) for s in shards.values()} == {5}
    assert set(torch.cat([shards[0], shards[1]]).tolist()) == set(range(10))
    assert set(torch.cat([shards[2], shards[3]]).tolist()) == set(range(7))


def _load_on_one_host(rank: int, port: int, base: str, scratch: str, queue) -> None:
    """One of two processes of a host: join the group and load the tables."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    world = World(rank, 2, rank, per_host=2)
    tables = load_tables(
        SageMakerPaths(Path(base)), TableSettings(), None, world, Path(scratch),
    )  # fmt: skip
    train = tables.labelled.train
    queue.put((rank, type(train.codes_array).__name__, str(train.codes_array.filename), len(train)))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_processes_on_a_host_map_the_one_copy_its_first_process_wrote(tmp_path: Path):
    job = Job(tmp_path / "opt_ml")
    job.channel("training", make_table("binary", n=200))
    scratch = tmp_path / "scratch"
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    port = free_port()
    processes = [
        context.Process(
            target=_load_on_one_host, args=(r, port, str(job.base), str(scratch), queue)
        )
        for r in range(2)
    ]
    for p in processes:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in processes)
    for p in processes:
        p.join(timeout=60)
    assert [p.exitcode for p in processes] == [0, 0]
    assert [r[1] for r in results] == ["memmap", "memmap"]
    assert results[0][2] == results[1][2] == str(scratch / "encoded" / "features_codes.npy")
    assert results[0][3] == results[1][3] == 160
    written = sorted(p.name for p in scratch.rglob("*.npy"))
    assert written == sorted(
        ["features_codes.npy", "features_numbers.npy", "labels.npy", "train_rows.npy",
         "valid_rows.npy"]
    )  # fmt: skip


@pytest.mark.slow
def test_sharded_hosts_train_on_their_own_files_and_agree_on_the_preprocessing(
    tmp_path: Path,
):
    table = make_table("binary", n=600)
    table.loc[:299, "color"] = table.loc[:299, "color"].replace("blue", "navy")  # host 1 only
    table.loc[300:, "shape"] = table.loc[300:, "shape"].replace("circle", "ring")  # host 2
    rendezvous = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    sharded = {"training": {"S3DistributionType": "ShardedByS3Key", "ContentType": "text/csv"}}
    jobs, processes = [], []
    for host, rows in (("algo-1", slice(0, 300)), ("algo-2", slice(300, 500))):
        job = Job(tmp_path / host)
        job.channel("training", table.iloc[rows])
        (job.config / "inputdataconfig.json").write_text(json.dumps(sharded))
        (job.config / "resourceconfig.json").write_text(
            json.dumps({"current_host": host, "hosts": ["algo-1", "algo-2"]})
        )
        job.hyperparameters({**FAST, "n_epochs": "2"})
        jobs.append(job)
        processes.append(start(job, **rendezvous))
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    digests = [re.findall(r"preprocessing state sha256=(\w+)", out) for out in outputs]
    assert len(digests[0]) == 1 and digests[0] == digests[1], outputs
    assert "hosts hold [240, 160] training rows" in outputs[0]
    model = load_model(jobs[0].model)
    vocab = {c.name: set(c.categories) for c in model.preprocessor.categorical}
    assert {"navy", "blue"} <= vocab["c1"] and {"ring", "circle"} <= vocab["c3"]
    state = json.loads((jobs[0].model / "preprocessing.json").read_text())
    assert state["features"] == model.preprocessor.to_dict()


def test_mapped_rows_gather_batches_and_subsets():
    codes = np.arange(20, dtype=np.uint8).reshape(10, 2)
    rows = MappedRows(codes, np.ones((10, 1), np.float32), np.arange(10)).subset(
        np.array([1, 3, 5])
    )
    batch = rows.rows(torch.tensor([2, 0]))
    assert batch.codes.tolist() == [[10, 11], [2, 3]] and batch.target.tolist() == [5, 1]
    assert len(rows) == 3 and rows.target.tolist() == [1, 3, 5]


def test_pretraining_on_sharded_rows_is_refused_before_reading_and_auto_skips_it(tmp_path: Path):
    job = Job(tmp_path / "opt_ml")
    sharded = {"unlabeled": {"S3DistributionType": "ShardedByS3Key"}, "training": {}}
    (job.config / "inputdataconfig.json").write_text(json.dumps(sharded))
    paths = SageMakerPaths(job.base)
    with pytest.raises(UserError, match=r"\['unlabeled'\] are ShardedByS3Key.*FullyReplicated"):
        check_sharding(paths, {"training", "unlabeled"}, World(0, 2), "rtd")
    assert not check_sharding(paths, {"training", "unlabeled"}, World(0, 2), "none")
    assert not check_sharding(paths, {"training", "unlabeled"}, World(0, 2), "auto")
    assert check_sharding(paths, {"training", "unlabeled"}, World(), "rtd")  # one host: all rows
    job.channel("training", make_table("binary", n=50))
    job.channel("unlabeled", make_table("binary", n=50).drop(columns="label"))
    facts = TableFacts("binary", labelled_rows=50, may_pretrain=False, code_columns=2)
    plan = JobPlan.read(paths).completed(facts)
    assert plan.pretraining.objective == "none"


def test_text_labels_after_many_numeric_ones_are_all_counted(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(statistics_module, "MAX_NUMERIC_TOKENS", 5)
    folder = tmp_path / "input" / "data" / "training"
    folder.mkdir(parents=True)
    labels = [str(i % 9) for i in range(40)] + ["x"]
    (folder / "a.csv").write_text("".join(f"{y},{i}\n" for i, y in enumerate(labels)))
    tables = load_tables(
        SageMakerPaths(tmp_path), TableSettings(), None, World(), tmp_path / "scratch",
    )  # fmt: skip
    assert tables.labelled.target.classes == sorted({*labels})


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(
    table=csv_tables(),
    header=st.booleans(),
    compress=st.booleans(),
    split=st.integers(0, 15),
)
def test_streamed_chunks_equal_the_whole_table_reader_on_generated_csv(
    table, header: bool, compress: bool, split: int
):
    """Two files (the second optionally gzip), read in chunks of 7 rows."""
    names, records = table
    target = names[0] if header else ""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "training"
        folder.mkdir()
        for name, part in (("a.csv", records[:split]), ("b.csv", records[split:])):
            data = write_csv(names if header else None, part, False, "\n").encode()
            (folder / name).write_bytes(gzip.compress(data) if compress else data)
        try:
            whole = read_labelled(folder, target)
        except UserError as error:
            try:
                channel = labelled_channel(folder, target)
                n_rows = sum(len(t) for t in channel.targets())
            except UserError:
                return
            assert "no data rows" in str(error) and n_rows == 0
            return
        channel = labelled_channel(folder, target)
        features, targets = pd.concat(channel.features()), pd.concat(channel.targets())
    assert features.index.tolist() == whole.features.index.tolist()
    assert list(features.columns) == list(whole.features.columns)
    assert targets.tolist() == whole.target.tolist()
    same = features.astype(object).where(features.notna(), None)
    expected = whole.features.astype(object).where(whole.features.notna(), None)
    assert same.values.tolist() == expected.values.tolist()


@pytest.mark.parametrize("header", [False, True])
def test_streamed_parquet_drops_the_index_pandas_stored(tmp_path: Path, header: bool):
    """`df.sample(...).to_parquet()` stores the index as `__index_level_0__`: the
    streamed reader drops it, as the whole-table reader does."""
    folder = tmp_path / "training"
    folder.mkdir()
    make_table("binary", n=20).sample(frac=1.0, random_state=0).to_parquet(folder / "t.parquet")
    whole = read_labelled(folder, "label" if header else "")
    channel = labelled_channel(folder, "label" if header else "")
    assert channel.names == list(whole.features.columns)
    chunks = pd.concat(channel.features())
    assert chunks.astype(str).equals(whole.features.astype(str))

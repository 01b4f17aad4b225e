"""Several processes with real torch.distributed (gloo) on loopback, as SageMaker lays out
several hosts (resourceconfig.json) or several GPUs on one host (one process each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import FAST, TRAIN_ENTRY, Job, free_port, make_table

from tabtransformer import load_model
from tabtransformer.distributed import World

pytestmark = pytest.mark.slow


def test_each_rank_gets_an_equal_disjoint_shard():
    order = torch.randperm(103, generator=torch.Generator().manual_seed(0))
    shards = [World(rank, 4).shard(order) for rank in range(4)]
    assert {len(s) for s in shards} == {25}
    assert len(set(torch.cat(shards).tolist())) == 100


def start(job: Job, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(TRAIN_ENTRY)],
        env={**os.environ, "SAGEMAKER_BASE_DIR": str(job.base), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_two_hosts_train_one_model_written_by_the_first(tmp_path):
    table = make_table("binary", n=400)
    rendezvous = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    jobs, processes = [], []
    for host in ("algo-1", "algo-2"):
        job = Job(tmp_path / host)
        job.channel("training", table)
        (job.config / "resourceconfig.json").write_text(
            json.dumps({"current_host": host, "hosts": ["algo-2", "algo-1"]})
        )
        jobs.append(job)
        processes.append(start(job, **rendezvous))
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert "process 0 of 2" in outputs[0]
    assert load_model(jobs[0].model).outputs(table.drop(columns="label")).shape == (400, 2)
    assert not jobs[1].model.exists() or not any(jobs[1].model.iterdir())


def test_several_processes_on_one_host_pretrain_and_fine_tune(tmp_path):
    """The multi-GPU layout (one process per device), run with gloo processes on the CPU."""
    table = make_table("binary", n=400)
    job = Job(tmp_path / "opt_ml")
    job.channel("training", table.iloc[:200])
    job.channel("unlabeled", table.iloc[200:].drop(columns="label"))
    job.hyperparameters({**FAST, "pretrain_objective": "rtd", "pretrain_epochs": "2"})
    process = start(
        job, PROCESSES_PER_HOST="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())
    )
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output
    assert "process 0 of 2" in output and "pretrain rtd epoch 2/2" in output
    assert load_model(job.model).task == "binary"


def test_malformed_resource_config_is_a_user_error(job: Job):
    job.channel("training", make_table("binary"))
    (job.config / "resourceconfig.json").write_text('{"hosts": ["algo-1"]}')  # no current_host
    result = job.train()
    assert result.returncode == 1
    assert job.failure.startswith("ClientError: Cannot read the cluster layout")

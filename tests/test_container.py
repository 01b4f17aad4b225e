"""The image's entry points, run as the image runs them, and the Dockerfile's promises."""

from __future__ import annotations

import re
import tarfile

import numpy as np
import pytest
from conftest import FAST, REPO, Job, Server, make_table

from tabtransformer import load_model

DOCKERFILE = (REPO / "Dockerfile").read_text()


@pytest.mark.slow
def test_train_pack_unpack_serve_round_trip(tmp_path):
    """What SageMaker does: train, tar model/ to S3, untar into a fresh /opt/ml/model."""
    table = make_table("binary")
    job = Job(tmp_path / "training_host")
    job.channel("training", table)
    job.hyperparameters(FAST)
    assert job.train().returncode == 0
    tarball = tmp_path / "model.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for path in job.model.iterdir():
            tar.add(path, arcname=path.name)
    serving_host = tmp_path / "serving_host"
    (serving_host / "model").mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(serving_host / "model", filter="data")
    server = Server(serving_host)
    try:
        rows = table.drop(columns="label").head(10)
        response = server.post(rows.to_csv(header=False, index=False))
        assert response.status_code == 200
        expected = load_model(tarball).predict(rows)
        assert np.allclose(response.json()["probabilities"], expected, atol=1e-9)
    finally:
        server.stop()


def test_image_runs_the_tested_entry_points():
    assert re.search(r"^COPY docker/train docker/serve /opt/program/$", DOCKERFILE, re.M)
    assert re.search(r"^ENV PATH=/opt/program:", DOCKERFILE, re.M)  # first: never shadowed
    for entry in ("train", "serve"):
        assert (REPO / "docker" / entry).stat().st_mode & 0o111, f"docker/{entry} not executable"


def test_image_follows_the_sagemaker_container_rules():
    assert "LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true" in DOCKERFILE
    # SageMaker mounts /opt/ml; tests/test_image.py checks the built image has none.
    assert not re.search(r"^(RUN|COPY|ADD|VOLUME|WORKDIR).*/opt/ml", DOCKERFILE, re.M)
    assert "PYTHONUNBUFFERED=1" in DOCKERFILE
    assert "ENTRYPOINT" not in DOCKERFILE and "tini" not in DOCKERFILE
    assert "-c /build/requirements.lock" in DOCKERFILE  # the lock CI installs
    build, runtime = DOCKERFILE.split("# ---- runtime stage")
    assert "gcc" in build and "gcc" not in runtime

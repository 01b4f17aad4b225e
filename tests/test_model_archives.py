"""A model.tar.gz is unpacked one way, bounded, for serving and for fine-tuning alike."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SERVE_ENTRY, Server, free_port

from tabtransformer import artifacts
from tabtransformer.artifacts import load_model, read_artifact, validate_artifact
from tabtransformer.errors import UserError

DATA = Path(__file__).parent / "data"
MODEL = DATA / "old_artifact"  # a small real artifact: five files, top level
PREDICTIONS = json.loads((DATA / "old_artifact_predictions.json").read_text())
ENTRY_POINTS = {"read_artifact": read_artifact, "validate_artifact": validate_artifact}


def rows() -> pd.DataFrame:
    return pd.DataFrame(PREDICTIONS["rows"], columns=["color", "size", "shape", "weight"])


def pack(archive: Path, add: Callable[[tarfile.TarFile], None], mode: str = "w:gz") -> Path:
    with tarfile.open(archive, mode) as tar:
        add(tar)
    return archive


def model_files(prefix: str = "") -> Callable[[tarfile.TarFile], None]:
    """Adds the model's files, each named `prefix` + its name."""
    return lambda tar: [tar.add(p, arcname=prefix + p.name) for p in sorted(MODEL.iterdir())]


def member(name: str, data: bytes = b"", **fields) -> Callable[[tarfile.TarFile], None]:
    """Adds one member `name` holding `data`, with TarInfo `fields` (type, linkname)."""

    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        for key, value in fields.items():
            setattr(info, key, value)
        tar.addfile(info, io.BytesIO(data) if data else None)

    return add


def both(*adds: Callable[[tarfile.TarFile], None]) -> Callable[[tarfile.TarFile], None]:
    return lambda tar: [add(tar) for add in adds]


def folder_archive(tmp_path: Path, *flags: str) -> Path:
    """`tar czf model.tar.gz model/` (or with `flags`, e.g. `-C model .`) by the real tar."""
    shutil.copytree(MODEL, tmp_path / "model")
    archive = tmp_path / "packed" / "model.tar.gz"
    archive.parent.mkdir()
    subprocess.run(["tar", "czf", str(archive), *(flags or ["model/"])], cwd=tmp_path, check=True)
    return archive


def user_error(entry: Callable[[Path], object], archive: Path) -> str:
    """The UserError `entry` raises for `archive`; it names the archive, not a scratch folder."""
    with pytest.raises(UserError) as error:
        entry(archive)
    message = str(error.value)
    assert str(archive) in message
    assert tempfile.gettempdir() not in message.replace(str(archive.parent), "")
    return message


def test_more_members_than_the_bound_are_refused_before_anything_is_unpacked(tmp_path, monkeypatch):
    """1,001 members: refused on the headers, naming the count and the bound."""
    extra = [member(f"extra/{i}") for i in range(artifacts.MAX_ARCHIVE_MEMBERS - 4)]
    archive = pack(tmp_path / "model.tar.gz", both(model_files(), *extra))
    monkeypatch.setattr(tarfile.TarFile, "extractall", lambda *a, **k: pytest.fail("unpacked"))
    for entry in ENTRY_POINTS.values():
        message = user_error(entry, archive)
        assert "1001 members or more" in message and "at most 1000" in message


def test_declared_sizes_past_the_bound_are_refused_before_anything_is_unpacked(
    tmp_path, monkeypatch
):
    """Member sizes adding up past MAX_UNPACKED_BYTES: refused, naming the size and bound."""
    monkeypatch.setattr(artifacts, "MAX_UNPACKED_BYTES", 1_000)
    archive = pack(tmp_path / "model.tar.gz", member("model.safetensors", b"x" * 2_000))
    monkeypatch.setattr(tarfile.TarFile, "extractall", lambda *a, **k: pytest.fail("unpacked"))
    for entry in ENTRY_POINTS.values():
        message = user_error(entry, archive)
        assert "2000 bytes or more" in message and "at most 1000 bytes" in message


def test_a_header_declaring_more_than_the_real_bound_stops_before_its_data_is_read(tmp_path):
    """A 5 GiB size field in a few hundred bytes of gzip: refused on the header alone."""
    info = tarfile.TarInfo("model.safetensors")
    info.size = 5 * 1024**3
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT)))
    for entry in ENTRY_POINTS.values():
        message = user_error(entry, archive)
        assert f"{5 * 1024**3} bytes or more" in message and "(4 GiB)" in message


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, "a symbolic link"),
        ({"type": tarfile.SYMTYPE, "linkname": "model_config.json"}, "a symbolic link"),
        ({"type": tarfile.LNKTYPE, "linkname": "model_config.json"}, "a hard link"),
        ({"type": tarfile.FIFOTYPE}, "a FIFO"),
        ({"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}, "a character device"),
    ],
)
def test_a_link_device_or_fifo_member_is_refused_with_its_name_and_kind(tmp_path, fields, words):
    """Only regular files and folders: links (even inside), devices and FIFOs are refused."""
    archive = pack(tmp_path / "model.tar.gz", both(model_files(), member("extra", **fields)))
    for entry in ENTRY_POINTS.values():
        message = user_error(entry, archive)
        assert f"'extra', {words}" in message and "only regular files and folders" in message


@pytest.mark.parametrize("name", ["../model_config.json", "model/../../notes.txt"])
def test_a_member_unpacking_outside_the_folder_is_refused_without_naming_a_scratch_folder(
    tmp_path, name
):
    """The 'data' filter's refusal in our words: the archive and the member, nothing else."""
    archive = pack(tmp_path / "model.tar.gz", both(model_files(), member(name, b"{}")))
    for entry in ENTRY_POINTS.values():
        message = user_error(entry, archive)
        assert f"holds {name!r}, which would unpack outside its folder" in message


def damaged(archive: Path, how: str) -> None:
    whole = archive.read_bytes()
    if how == "truncated":
        archive.write_bytes(whole[: len(whole) // 2])
    else:  # bytes flipped in the middle of the compressed stream
        middle = len(whole) // 2
        archive.write_bytes(whole[:middle] + bytes(b ^ 0xFF for b in whole[middle:][:64]))


@pytest.mark.parametrize("how", ["truncated", "flipped"])
@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz"])
def test_a_damaged_archive_gives_the_same_user_error_from_both_entry_points(tmp_path, mode, how):
    """Truncated or corrupted gzip, bzip2 or xz: one wording, whoever unpacks it."""
    archive = pack(tmp_path / "model.tar.gz", model_files(), mode)
    damaged(archive, how)
    messages = {user_error(entry, archive) for entry in ENTRY_POINTS.values()}
    assert len(messages) == 1, messages
    assert "is not a readable model.tar.gz" in messages.pop()


@pytest.mark.parametrize("flags", [(), ("-C", "model", ".")], ids=["model-folder", "dot-slash"])
def test_tar_czf_of_a_model_folder_or_of_its_files_loads_and_predicts_as_the_folder(
    tmp_path, flags
):
    """`tar czf model.tar.gz model/` (one top-level folder) and `-C model .` (./ names)."""
    archive = folder_archive(tmp_path, *flags)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert ("model/model.safetensors" if not flags else "./model.safetensors") in names
    validate_artifact(archive)
    got = load_model(archive).outputs(rows())
    assert np.array_equal(got, load_model(MODEL).outputs(rows()))
    assert np.allclose(got, PREDICTIONS["probabilities"], atol=1e-6)


def test_a_damaged_file_inside_the_top_level_folder_names_the_archive(tmp_path):
    """A bad model_config.json under model/: the message names the tarball, not a scratch
    folder."""
    bad = member("model/model_config.json", b"{not json")
    files = [p for p in sorted(MODEL.iterdir()) if p.name != "model_config.json"]
    add = both(bad, lambda tar: [tar.add(p, arcname="model/" + p.name) for p in files])
    archive = pack(tmp_path / "model.tar.gz", add)
    for entry in ENTRY_POINTS.values():
        assert "holds a damaged" in user_error(entry, archive)


@pytest.mark.parametrize(
    ("add", "found"),
    [
        (both(member("notes.txt", b"x"), member("data/train.csv", b"a,b")), "[data/, notes.txt]"),
        (member("model/notes.txt", b"x"), "[model/] and model/ holds [notes.txt]"),
        (both(model_files("a/"), model_files("b/")), "[a/, b/]"),
    ],
    ids=["unrelated", "one-folder-without-the-files", "two-folders"],
)
def test_an_archive_without_the_model_files_names_it_and_the_expected_layout(tmp_path, add, found):
    """The files neither at the top level nor in one folder: what was found and expected."""
    archive = pack(tmp_path / "model.tar.gz", add)
    for entry in ENTRY_POINTS.values():
        message = user_error(entry, archive)
        assert f"top level holds {found}" in message, message
        for name in ("model.safetensors", "model_config.json", "preprocessing.json"):
            assert name in message
        assert "at its top level" in message and "inside one top-level folder" in message


# --- through the real server (docker/serve: gunicorn over an /opt/ml tree) -----------------


def opt_ml_with(tmp_path: Path, archive: Path) -> Path:
    base = tmp_path / "opt_ml"
    (base / "model").mkdir(parents=True)
    shutil.copy(archive, base / "model" / "model.tar.gz")
    return base


@pytest.mark.slow
def test_the_real_server_serves_a_folder_layout_archive_as_the_folder(tmp_path):
    """`tar czf model.tar.gz model/` in /opt/ml/model: the same probabilities as the folder."""
    server = Server(opt_ml_with(tmp_path, folder_archive(tmp_path)))
    try:
        response = server.post(rows().to_csv(header=False, index=False))
        assert response.status_code == 200, response.text
    finally:
        server.stop()
    expected = load_model(MODEL).outputs(rows())
    assert np.allclose(response.json()["probabilities"], expected, atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("add", "words"),
    [
        (both(model_files(), member("x", type=tarfile.SYMTYPE, linkname="/")), "symbolic link"),
        (member("notes.txt", b"x"), "inside one top-level folder"),
        (model_files(), "is not a readable model.tar.gz"),  # truncated below
    ],
    ids=["symlink", "unrelated", "truncated"],
)
def test_the_real_server_stops_at_start_on_a_bad_archive_with_one_line(tmp_path, add, words):
    """Exit code 1 and one ERROR line naming the archive and the problem, no traceback."""
    archive = pack(tmp_path / "model.tar.gz", add)
    if words.startswith("is not a readable"):
        damaged(archive, "truncated")
    base = opt_ml_with(tmp_path, archive)
    env = {
        **os.environ,
        "SAGEMAKER_BASE_DIR": str(base),
        "SAGEMAKER_BIND_TO_PORT": str(free_port()),
    }
    result = subprocess.run(
        [sys.executable, str(SERVE_ENTRY)], env=env, capture_output=True, text=True, timeout=60
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-2000:]
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "cannot serve" in errors[0], output[-2000:]
    assert str(base / "model" / "model.tar.gz") in errors[0] and words in errors[0]
    assert tempfile.gettempdir() not in errors[0].replace(str(tmp_path), "")

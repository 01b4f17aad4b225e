"""The image's entry points, run as the image runs them, and the Dockerfile's promises;
the package's import structure: serving imports no training code, no import cycles, no
module importing another's private names."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

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
        expected = load_model(tarball).outputs(rows)
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


# --- the package's import structure ---------------------------------------------------

PACKAGE = REPO / "src" / "tabtransformer"
# The modules serving may import: the server and its decoders, the artifact, the model and
# what predicting needs. Every other module of the package is training code.
SERVING_SIDE = {
    "tabtransformer",
    "tabtransformer.artifacts",
    "tabtransformer.errors",
    "tabtransformer.formats",
    "tabtransformer.inference",
    "tabtransformer.model",
    "tabtransformer.options",
    "tabtransformer.paths",
    "tabtransformer.preprocessing",
    "tabtransformer.serving",
    "tabtransformer.serving.accept",
    "tabtransformer.serving.app",
    "tabtransformer.serving.codecs",
    "tabtransformer.serving.server",
    "tabtransformer.serving.settings",
}
TRAINING_SIDE = [  # at least these; any module not in SERVING_SIDE counts too
    "channels",
    "checkpoints",
    "distributed",
    "host_store",
    "job",
    "loop",
    "pretraining",
    "reports",
    "streaming",
    "table_statistics",
    "tables",
    "training",
]


def package_modules() -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its own name)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ["tabtransformer", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def import_time_nodes(tree: ast.Module) -> list[ast.AST]:
    """The statements run when the module is imported: not those in functions, nor in
    `if TYPE_CHECKING:` blocks."""
    nodes, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if is_type_checking(node):
            todo += node.orelse
            continue
        nodes.append(node)
        todo += ast.iter_child_nodes(node)
    return nodes


def imported_modules(node: ast.AST, modules: dict[str, Path]) -> set[str]:
    """The package's modules an import statement names (`from tabtransformer import x`:
    the module x when there is one, else the package)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in modules}
    if not isinstance(node, ast.ImportFrom) or node.module not in modules:
        return set()
    return {
        f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
        for a in node.names
    }


def import_graph() -> dict[str, set[str]]:
    """Which of the package's modules each module imports when it is imported."""
    modules = package_modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[name] = {
            target
            for node in import_time_nodes(tree)
            for target in imported_modules(node, modules)
            if target != name
        }
    return graph


def test_serving_imports_none_of_the_training_code():
    modules = set(package_modules())
    training_side = modules - SERVING_SIDE
    assert {f"tabtransformer.{m}" for m in TRAINING_SIDE} <= training_side
    assert modules >= SERVING_SIDE, "SERVING_SIDE names a module that does not exist"
    code = (
        "import json, sys\n"
        "import tabtransformer.serving.server, tabtransformer.serving.app\n"
        "import tabtransformer.serving.codecs\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('tabtransformer'))))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout))
    assert "tabtransformer.inference" in loaded, out.stderr
    assert "tabtransformer.formats" in loaded  # the CSV parser serving shares with training
    assert not loaded & training_side, f"serving imports training code: {loaded & training_side}"


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            pytest.fail(f"import cycle: {' -> '.join(cycle)}")
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    # the graph holds the edges that matter: serving's parser, and statistics on preprocessing
    assert "tabtransformer.formats" in graph["tabtransformer.serving.codecs"]
    assert "tabtransformer.preprocessing" in graph["tabtransformer.table_statistics"]


def test_no_module_imports_another_modules_private_names():
    modules = package_modules()
    found = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        aliases = {}  # names bound to one of the package's modules
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in modules:
                for a in node.names:
                    if a.name.startswith("_"):
                        found.append(f"{name}:{node.lineno} imports {node.module}.{a.name}")
                    if f"{node.module}.{a.name}" in modules:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in modules and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                found.append(f"{name}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert not found, found

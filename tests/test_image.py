"""The real image: built from the Dockerfile once per session and run as SageMaker runs it.

Engine: docker when `docker info` answers, else buildah (chroot isolation, vfs storage).
With buildah, `serve` runs in a network namespace of its own, so its 0.0.0.0 bind reaches no
network but that namespace's loopback. `make image-test` runs this file; plain `pytest`
leaves it out (`-m "not image"` in pyproject.toml). If the image cannot be built or run
here, every test fails with the reason: an untested image is not an option.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FAST, REPO, Job, make_table

pytestmark = [pytest.mark.image, pytest.mark.slow]

TAG = "localhost/tabtransformer-sagemaker:image-test"
GPU_TAG = "localhost/tabtransformer-sagemaker:gpu-image-test"
BUILD_TIMEOUT_S = 40 * 60
RUN_TIMEOUT_S = 600
PORT = 8137  # not the default 8080: the server must take it from SAGEMAKER_BIND_TO_PORT
SERVE_ENV = {"SAGEMAKER_BIND_TO_PORT": str(PORT), "SAGEMAKER_MODEL_SERVER_WORKERS": "1"}
NOBODY = "65534:65534"
SERVING_USER = "model-server"  # created by the Dockerfile; serve's workers run as it
SERVING_UID = "999"
OPT_ML_PROBE = ["sh", "-c", "if [ -e /opt/ml ]; then ls -lA /opt/ml; else echo absent; fi"]


def _ok(command: list[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def run_options(opt_ml: Path | None, env: dict[str, str] | None, user: str | None) -> list[str]:
    """`-v`, `--env` and `--user` options, spelled the same by `docker run` and `buildah run`."""
    options = ["-v", f"{opt_ml}:/opt/ml"] if opt_ml is not None else []
    for key, value in (env or {}).items():
        options += ["--env", f"{key}={value}"]
    return options + (["--user", user] if user else [])


class Engine:
    """Runs the built image the way SageMaker does: `IMAGE train`, `IMAGE serve`."""

    name = ""

    def config(self) -> dict:
        """The image's Docker config: Entrypoint, Cmd, Env, Labels, ExposedPorts."""
        raise NotImplementedError

    def run(
        self,
        command: list[str],
        opt_ml: Path | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
    ) -> subprocess.CompletedProcess:
        raise NotImplementedError

    def run_default(self) -> subprocess.CompletedProcess:
        """`docker run IMAGE` with no command: the image's CMD."""
        raise NotImplementedError

    def start_server(self, opt_ml: Path, env: dict[str, str]) -> Server:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class Server:
    """A `serve` process of the image, reachable through `request`, stopped by SIGTERM."""

    def request(
        self, method: str, path: str, body: str = "", headers: dict | None = None, port: int = PORT
    ) -> tuple[int, str]:
        raise NotImplementedError

    def sigterm(self, timeout: float = 120) -> int:
        """Send SIGTERM as SageMaker does when it stops an endpoint; the exit code."""
        raise NotImplementedError

    def wait_until_pinged(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.request("GET", "/ping")[0] == 200:
                return
            if self.exited():
                pytest.fail(f"serve exited before answering /ping:\n{self.output()}")
            time.sleep(1)
        pytest.fail(f"serve did not answer /ping within {timeout} s:\n{self.output()}")

    def exited(self) -> bool:
        raise NotImplementedError

    def output(self) -> str:
        raise NotImplementedError

    def processes(self) -> dict[int, dict]:
        """The `serve` processes (gunicorn's master and workers): pid -> PROCESSES' entry."""
        raise NotImplementedError

    def master_and_workers(self) -> tuple[dict, list[dict]]:
        """The one serve process whose parent is not one (the master), and its children."""
        serving = self.processes()
        masters = [p for p in serving.values() if p["ppid"] not in serving]
        assert len(masters) == 1, f"expected one serve master, found {serving}"
        workers = [p for p in serving.values() if p["ppid"] == masters[0]["pid"]]
        return masters[0], workers


# Lists the processes running /opt/program/serve (all of /proc, or the pids given) with
# their parent and the Uid, Gid and Groups lines of /proc/PID/status: prints JSON.
PROCESSES = """
import json, os, sys
found = {}
for pid in sys.argv[1:] or [p for p in os.listdir("/proc") if p.isdigit()]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\\0")
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.rstrip("\\n").split(":", 1) for line in f if ":" in line)
    except OSError:
        continue
    # buildah's own helper has the command among its arguments: not it, python's.
    if len(cmdline) > 1 and b"python" in cmdline[0] and cmdline[1] == b"/opt/program/serve":
        found[int(pid)] = {"pid": int(pid), "ppid": int(status["PPid"]),
                           "uid": status["Uid"].split(), "gid": status["Gid"].split(),
                           "groups": status.get("Groups", "").split()}
print(json.dumps(found))
"""


def parse_processes(printed: str) -> dict[int, dict]:
    return {int(pid): entry for pid, entry in json.loads(printed).items()}


# An HTTP client run inside the server's network namespace: prints [status, body].
CLIENT = """
import json, sys, urllib.error, urllib.request
method, url, body, headers = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
request = urllib.request.Request(url, data=body.encode() or None, method=method, headers=headers)
try:
    with urllib.request.urlopen(request, timeout=60) as response:
        print(json.dumps([response.status, response.read().decode()]))
except urllib.error.HTTPError as error:
    print(json.dumps([error.code, error.read().decode()]))
except OSError as error:
    print(json.dumps([0, repr(error)]))
"""


class Buildah(Engine):
    """One working container of the image; each `run` is a fresh process in it."""

    name = "buildah"
    cli = ("buildah", "--storage-driver", os.environ.get("BUILDAH_STORAGE_DRIVER", "vfs"))

    def __init__(self, image: str):
        self.image = image
        self.container = self._buildah("from", "--pull=never", image).stdout.strip()
        # Before any run mounts a volume there: what the image itself holds at /opt/ml.
        self.opt_ml_at_start = self.run(OPT_ML_PROBE).stdout.strip()

    def _buildah(self, *args: str, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.cli, *args], capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"buildah {' '.join(args)} failed:\n{result.stderr}")
        return result

    def config(self) -> dict:
        inspected = json.loads(self._buildah("inspect", "--type", "image", self.image).stdout)
        return inspected["Docker"]["config"]

    def run_args(self, command, opt_ml=None, env=None, user=None) -> list[str]:
        options = run_options(opt_ml, env, user)
        return [*self.cli, "run", "--isolation", "chroot", *options, self.container, "--", *command]

    def run(self, command, opt_ml=None, env=None, user=None) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.run_args(command, opt_ml, env, user),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )

    def run_default(self) -> subprocess.CompletedProcess:
        return self.run(self.config()["Cmd"])  # buildah run needs the command spelled out

    def start_server(self, opt_ml, env) -> Server:
        return NamespacedServer(self, opt_ml, env)

    def close(self) -> None:
        subprocess.run([*self.cli, "rm", self.container], capture_output=True)


class NamespacedServer(Server):
    """`buildah run ... serve` inside a private network namespace with only loopback."""

    def __init__(self, engine: Buildah, opt_ml: Path, env: dict[str, str]):
        self.namespace = f"tabtransformer-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.namespace], check=True)
        subprocess.run(["ip", "-n", self.namespace, "link", "set", "lo", "up"], check=True)
        self.log = opt_ml / "serve.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.namespace, *engine.run_args(["serve"], opt_ml, env)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def request(self, method, path, body="", headers=None, port=PORT) -> tuple[int, str]:
        result = subprocess.run(
            ["ip", "netns", "exec", self.namespace, sys.executable, "-c", CLIENT, method,
             f"http://127.0.0.1:{port}{path}", body, json.dumps(headers or {})],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        status, text = json.loads(result.stdout)
        return status, text

    def processes(self) -> dict[int, dict]:
        """Read from this machine's /proc: chroot isolation shares its pids and user IDs."""
        pids = subprocess.run(
            ["ip", "netns", "pids", self.namespace], capture_output=True, text=True
        ).stdout.split()
        if not pids:
            return {}
        scan = [sys.executable, "-c", PROCESSES, *pids]
        return parse_processes(subprocess.run(scan, capture_output=True, text=True).stdout)

    def sigterm(self, timeout=120) -> int:
        # The gunicorn master in the namespace (the process `docker stop` would signal).
        os.kill(self.master_and_workers()[0]["pid"], signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def exited(self) -> bool:
        return self.process.poll() is not None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=60)
        subprocess.run(["ip", "netns", "pids", self.namespace], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True)


class Docker(Engine):
    """`docker run` of the image: a fresh container per run."""

    name = "docker"

    def __init__(self, image: str):
        self.image = image
        self.opt_ml_at_start = self.run(OPT_ML_PROBE).stdout.strip()

    def config(self) -> dict:
        result = subprocess.run(
            ["docker", "image", "inspect", self.image], capture_output=True, text=True, check=True
        )
        return json.loads(result.stdout)[0]["Config"]

    def run_args(self, command, opt_ml=None, env=None, user=None) -> list[str]:
        return [*run_options(opt_ml, env, user), self.image, *command]

    def run(self, command, opt_ml=None, env=None, user=None) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["docker", "run", "--rm", *self.run_args(command, opt_ml, env, user)],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )

    def run_default(self) -> subprocess.CompletedProcess:
        return self.run([])

    def start_server(self, opt_ml, env) -> Server:
        return DockerServer(self, opt_ml, env)

    def close(self) -> None:
        pass


class DockerServer(Server):
    """`docker run -d IMAGE serve`, published on a free loopback port of the host."""

    def __init__(self, engine: Docker, opt_ml: Path, env: dict[str, str]):
        ports = ["-p", f"127.0.0.1::{PORT}", "-p", "127.0.0.1::8080"]
        self.container = subprocess.run(
            ["docker", "run", "-d", *ports, *engine.run_args(["serve"], opt_ml, env)],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip

    def host_port(self, port: int) -> int:
        mapped = subprocess.run(
            ["docker", "port", self.container, str(port)], capture_output=True, text=True
        ).stdout.split()
        return int(mapped[0].rsplit(":", 1)[1])

    def request(self, method, path, body="", headers=None, port=PORT) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.host_port(port)}{path}"
        result = subprocess.run(
            [sys.executable, "-c", CLIENT, method, url, body, json.dumps(headers or {})],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        status, text = json.loads(result.stdout)
        return status, text

    def processes(self) -> dict[int, dict]:
        """Read inside the container (its own pid namespace)."""
        scan = ["docker", "exec", self.container, "python3", "-c", PROCESSES]
        return parse_processes(subprocess.run(scan, capture_output=True, text=True).stdout)

    def sigterm(self, timeout=120) -> int:
        subprocess.run(["docker", "kill", "--signal", "TERM", self.container], check=True)
        waited = subprocess.run(
            ["docker", "wait", self.container], capture_output=True, text=True, timeout=timeout
        )
        return int(waited.stdout.strip())

    def exited(self) -> bool:
        state = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Running}}", self.container],
            capture_output=True,
            text=True,
        )
        return state.stdout.strip() != "true"

    def output(self) -> str:
        logs = subprocess.run(["docker", "logs", self.container], capture_output=True, text=True)
        return logs.stdout + logs.stderr

    def close(self) -> None:
        subprocess.run(["docker", "rm", "-f", self.container], capture_output=True)


def choose_engine() -> str:
    """docker when its engine answers, else buildah; fails loudly when neither can work."""
    if shutil.which("docker") and _ok(["docker", "info"]):
        return "docker"
    if not shutil.which("buildah"):
        pytest.fail(
            "IMAGE NOT TESTED: no Docker engine answers `docker info` and buildah is not "
            "installed. Install it (as root: apt-get install -y buildah debootstrap) or run "
            "on a machine with Docker. .ci/run installs it."
        )
    if os.geteuid() != 0:
        pytest.fail("IMAGE NOT TESTED: buildah with chroot isolation and netns need root.")
    return "buildah"


def built(tag: str, variant: str, folder: Path) -> Iterator[Engine]:
    """Build the real Dockerfile (scripts/image.sh, as `make image` does) as `variant`, run
    it, and remove it afterwards."""
    name = choose_engine()
    log = folder / "build.log"
    started = time.monotonic()
    with log.open("w") as out:
        build = subprocess.run(
            [str(REPO / "scripts" / "image.sh"), tag],
            env={**os.environ, "IMAGE_ENGINE": name, "VARIANT": variant},
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=BUILD_TIMEOUT_S,
        )
    if build.returncode != 0:
        pytest.fail(
            f"IMAGE NOT BUILT ({name}), exit {build.returncode}:\n{log.read_text()[-6000:]}"
        )
    print(f"\n{variant} image built with {name} in {time.monotonic() - started:.0f} s")
    running = Buildah(tag) if name == "buildah" else Docker(tag)
    yield running
    running.close()
    if name == "buildah":
        subprocess.run([*Buildah.cli, "rmi", tag], capture_output=True)


@pytest.fixture(scope="session")
def engine(tmp_path_factory) -> Iterator[Engine]:
    """The CPU image, built once for the session."""
    yield from built(TAG, "cpu", tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="session")
def gpu_engine(tmp_path_factory) -> Iterator[Engine]:
    """The CUDA image (make image-gpu-test: it downloads about 4 GB of CUDA wheels)."""
    yield from built(GPU_TAG, "gpu", tmp_path_factory.mktemp("gpu-image"))


def trained_tree(
    engine: Engine, tmp_path: Path, hyperparameters: dict
) -> tuple[Job, subprocess.CompletedProcess]:
    job = Job(tmp_path / "opt_ml")
    job.channel("training", make_table("binary"))
    job.hyperparameters(hyperparameters)
    result = engine.run(["train"], opt_ml=job.base)
    return job, result


@pytest.fixture(scope="module")
def trained(engine: Engine, tmp_path_factory) -> tuple[Job, subprocess.CompletedProcess]:
    """One `IMAGE train` over a small SageMaker tree, shared by the checks that read it."""
    return trained_tree(engine, tmp_path_factory.mktemp("trained"), FAST)


def test_train_resolves_to_the_projects_entry_point(engine: Engine):
    result = engine.run(["sh", "-c", "command -v train; command -v serve"])
    assert result.stdout.split() == ["/opt/program/train", "/opt/program/serve"], result


def test_image_train_writes_the_model_and_the_reports(trained):
    job, result = trained
    assert result.returncode == 0, result.stdout + result.stderr
    assert "metrics={'f1': " in result.stdout + result.stderr
    assert (job.model / "model.safetensors").stat().st_size > 1000
    assert {"preprocessing.json", "model_config.json", "metrics.json"} <= {
        p.name for p in job.model.iterdir()
    }
    reports = {p.name for p in (job.base / "output" / "data").iterdir()}
    assert {Path(name).suffix for name in reports} >= {".csv", ".png"}, reports
    assert not (job.base / "output" / "failure").exists()


def test_model_files_are_readable_by_another_user(engine: Engine, trained):
    job, _ = trained
    probe = "from tabtransformer import load_model; print(load_model('/opt/ml/model').task)"
    result = engine.run(["python3", "-c", probe], opt_ml=job.base, user=NOBODY)
    assert result.returncode == 0 and result.stdout.strip() == "binary", result.stderr


def test_a_bad_hyperparameter_fails_the_job_with_a_reason(engine: Engine, tmp_path):
    job, result = trained_tree(engine, tmp_path, {**FAST, "n_epochs": "many"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "n_epochs" in job.failure and "Traceback" not in job.failure
    assert not (job.model / "model.safetensors").exists()


def test_a_job_with_an_unlabeled_channel_pretrains_then_fine_tunes(engine: Engine, tmp_path):
    job = Job(tmp_path / "opt_ml")
    table = make_table("binary", n=400)
    job.channel("training", table.iloc[:120])
    job.channel("unlabeled", table.iloc[120:].drop(columns="label"))
    job.hyperparameters(
        {**FAST, "pretrain_objective": "rtd", "pretrain_epochs": "2", "pretrain_patience": "2"}
    )
    result = engine.run(["train"], opt_ml=job.base)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pretrain rtd epoch 1/2" in result.stdout + result.stderr
    assert json.loads((job.model / "metrics.json").read_text())["pretrained"] == "rtd"


def test_image_serve_answers_ping_and_invocations_and_stops_on_sigterm(engine, trained):
    job, _ = trained
    rows = make_table("binary").drop(columns="label").head(3)
    server = engine.start_server(job.base, SERVE_ENV)
    try:
        server.wait_until_pinged()
        assert server.request("GET", "/ping", port=8080)[0] == 0  # nothing on the default port
        csv = rows.to_csv(header=False, index=False)
        status, body = server.request("POST", "/invocations", csv, {"Content-Type": "text/csv"})
        assert status == 200, body
        assert len(json.loads(body)["probabilities"]) == 3
        instances = json.dumps({"instances": rows.astype(object).values.tolist()})
        status, body = server.request(
            "POST",
            "/invocations",
            instances,
            {"Content-Type": "application/json", "Accept": "application/json;verbose"},
        )
        assert status == 200, body
        assert set(json.loads(body)["predicted_label"]) <= {"yes", "no"}
        assert server.sigterm() == 0, server.output()
    finally:
        server.close()


def test_image_serve_runs_its_workers_as_the_unprivileged_user(engine, trained, tmp_path):
    """SageMaker starts `serve` as root: the master may stay root (it binds the port), the
    workers, which read the requests, run as model-server. The model here is readable by
    root only (a model.tar.gz may unpack so): the server then serves a copy the workers read."""
    job, _ = trained
    ids = engine.run(["id", SERVING_USER])
    assert ids.stdout.split()[:2] == [
        f"uid={SERVING_UID}({SERVING_USER})",
        f"gid={SERVING_UID}({SERVING_USER})",
    ], ids.stdout + ids.stderr
    login = engine.run(["getent", "passwd", SERVING_USER]).stdout.strip()
    assert login.endswith(":/usr/sbin/nologin"), login
    opt_ml = tmp_path / "opt_ml"
    shutil.copytree(job.model, opt_ml / "model")
    for path in [opt_ml / "model", *(opt_ml / "model").rglob("*")]:
        path.chmod(0o700 if path.is_dir() else 0o600)
    server = engine.start_server(opt_ml, {**SERVE_ENV, "SAGEMAKER_MODEL_SERVER_WORKERS": "2"})
    try:
        server.wait_until_pinged()
        deadline = time.monotonic() + 60
        while True:  # both workers forked and past gunicorn's switch of user
            master, workers = server.master_and_workers()
            switched = [w for w in workers if w["uid"] == [SERVING_UID] * 4]
            if len(switched) == 2 or time.monotonic() > deadline:
                break
            time.sleep(1)
        print(f"\nserve master {master}\nserve workers {workers}")
        assert len(workers) == 2, (master, workers)
        for worker in workers:  # real, effective, saved and filesystem IDs
            assert worker["uid"] == [SERVING_UID] * 4, worker
            assert worker["gid"] == [SERVING_UID] * 4, worker
            assert worker["groups"] == [], worker  # root's supplementary groups dropped
        assert "serving a copy" in server.output(), server.output()
        assert server.request("GET", "/ping")[0] == 200
        csv = make_table("binary").drop(columns="label").head(4).to_csv(header=False, index=False)
        status, body = server.request("POST", "/invocations", csv, {"Content-Type": "text/csv"})
        assert status == 200, body
        assert len(json.loads(body)["probabilities"]) == 4
        assert server.sigterm() == 0, server.output()  # the root master stops its workers
    finally:
        server.close()


def test_image_runs_as_sagemaker_requires(engine: Engine):
    config = engine.config()
    assert not config.get("Entrypoint"), config.get("Entrypoint")  # `IMAGE train` runs train
    # No USER: SageMaker runs training as root, which writes the /opt/ml mounts.
    assert not config.get("User"), config.get("User")
    assert engine.run(["id", "-u"]).stdout.strip() == "0"
    assert config["Labels"]["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    assert "8080/tcp" in config.get("ExposedPorts", {})
    path = next(e for e in config["Env"] if e.startswith("PATH="))
    assert path.startswith("PATH=/opt/program:"), path
    assert engine.opt_ml_at_start == "absent"  # SageMaker mounts /opt/ml; the image has none


def test_image_without_a_command_prints_its_usage(engine: Engine):
    result = engine.run_default()
    assert result.returncode == 0
    assert result.stdout.startswith("usage: docker run IMAGE train | serve")


def test_the_runtime_holds_no_build_inputs_caches_or_test_suites(engine: Engine):
    leftovers = (
        "ls -d /wheels /build /run/secrets /root/.cache/pip 2>/dev/null; ls -A /mnt; "
        "site=$(python3 -c 'import sysconfig; print(sysconfig.get_path(\"purelib\"))'); "
        "find $site -type d -name tests | head -n 3"
    )
    result = engine.run(["sh", "-c", leftovers])
    assert result.stdout.split() == [], result.stdout


def test_compile_true_compiles_in_the_image(engine: Engine, tmp_path):
    """The runtime has what torch.compile needs (g++, Python's and torch's headers): a
    compile=true job compiles rather than falling back to eager."""
    _, result = trained_tree(engine, tmp_path, {**FAST, "compile": "true", "n_epochs": "2"})
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "torch.compile of the model compiled" in log, log[-3000:]
    assert "running it eagerly" not in log


def test_every_installed_requirement_is_satisfied(engine: Engine):
    """torch is installed without its dependencies first; the lock step must add them all."""
    result = engine.run(["python3", "-m", "pip", "check"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_process_runs_on_tcmalloc(engine: Engine):
    """The runtime preloads tcmalloc (glibc's malloc maps and unmaps the large attention
    temporaries of wide tables at every step), quietly."""
    maps = "import sys; sys.stdout.write(open('/proc/self/maps').read())"
    result = engine.run(["python3", "-c", maps])
    assert result.returncode == 0, result.stderr
    assert "libtcmalloc_minimal" in result.stdout
    assert result.stderr == ""


@pytest.mark.image_gpu
def test_gpu_variant_carries_cuda_torch_and_trains_where_no_gpu_is(gpu_engine: Engine, tmp_path):
    """The CUDA image, built without a CUDA base (PyPI's CUDA torch brings its libraries):
    torch is a CUDA build, its requirements are all there, and `train` runs on the CPU of
    a machine without a GPU (the driver comes with the NVIDIA runtime on a GPU host)."""
    probe = "import torch; print(torch.version.cuda, torch.cuda.is_available())"
    result = gpu_engine.run(["python3", "-c", probe])
    assert result.returncode == 0, result.stderr
    cuda, available = result.stdout.split()
    assert cuda != "None" and available == "False", result.stdout
    assert gpu_engine.run(["python3", "-m", "pip", "check"]).returncode == 0
    job, trained = trained_tree(gpu_engine, tmp_path, FAST)
    log = trained.stdout + trained.stderr
    assert trained.returncode == 0, log[-3000:]
    assert "parameters on cpu" in log and (job.model / "model.safetensors").is_file()

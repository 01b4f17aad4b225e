# Set-up and everyday commands. `make demo` and `make test` do their own installation.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint format lock image image-test image-gpu-test clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/python scripts/demo.py

# The image tests are left out here (pyproject addopts: -m 'not image'): make image-test.
# Two pytest workers, a test file per worker (its module fixtures train once): most tests
# wait on a subprocess or a server, so two cores run two files at once.
test: install lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=20

test-fast: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow and not image"

lint: install
	$(BIN)/ruff check src tests scripts docker
	$(BIN)/ruff format --check src tests scripts docker
	$(BIN)/hadolint Dockerfile

format: install
	$(BIN)/ruff check --fix src tests scripts docker
	$(BIN)/ruff format src tests scripts docker

lock: install
	{ echo "# One lock for CI, development and the Docker image (pip constraints file)."; \
	  echo "# Regenerate with: make lock.  torch: the CPU wheel here, the CUDA wheel of the same"; \
	  echo "# version in the Dockerfile."; \
	  $(BIN)/pip freeze --exclude-editable | sed 's/+cpu$$//'; } > requirements.lock

# The CPU image with docker, or buildah where no Docker engine runs (VARIANT=gpu: the CUDA
# one). Options (TORCH_WHEELS, PIP_CERT, BASE_IMAGE, ...): see scripts/image.sh.
image:
	scripts/image.sh

# Builds the real Dockerfile once and runs the image as SageMaker does (tests/test_image.py).
image-test: install
	$(BIN)/python -m pytest -q -m "image and not image_gpu" tests/test_image.py

# The CUDA variant built here (bookworm base, PyPI's CUDA torch): torch.version.cuda and a
# train job on the CPU. Not in CI: it downloads about 4 GB of CUDA wheels.
image-gpu-test: install
	$(BIN)/python -m pytest -q -m image_gpu tests/test_image.py

clean:
	rm -rf $(VENV) demo build .pytest_cache .ruff_cache

# Set-up and everyday commands. `make demo` and `make test` do their own installation.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint format lock image readme-tables clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/python scripts/demo.py

test: install lint
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

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

image:
	@if docker info >/dev/null 2>&1; then docker build -t tabtransformer-sagemaker . ; \
	else echo "make image: no Docker engine reachable here (docker info failed); build on a machine with Docker: docker build -t tabtransformer-sagemaker ."; fi

clean:
	rm -rf $(VENV) demo build .pytest_cache .ruff_cache

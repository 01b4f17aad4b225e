# syntax=docker/dockerfile:1
# TabTransformer for SageMaker: `docker run IMAGE train` and `docker run IMAGE serve`.
#
# GPU image (default):  docker build -t tabtransformer .
# CPU image:            docker build --build-arg BASE_IMAGE=ubuntu:24.04 \
#                         --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu \
#                         -t tabtransformer:cpu .
#
# Python packages come from requirements.lock, the same constraints file CI installs; only
# the torch build differs (CUDA wheel here, CPU wheel in CI), at the version the lock pins.
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---- build stage: compilers live here only (sagemaker-training builds a C extension) ----
FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.lock pyproject.toml /build/
# torch first, from the PyTorch index, at the version the lock pins.
RUN pip install --index-url "${TORCH_INDEX}" \
        "torch==$(sed -n 's/^torch==//p' /build/requirements.lock)"
# Then the runtime dependencies named in pyproject.toml, pinned by the lock (cached layer).
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('/build/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /build/runtime.txt \
    && pip install -c /build/requirements.lock -r /build/runtime.txt
COPY README.md /build/
COPY src /build/src
RUN pip install --no-deps /build

# ---- runtime stage -----------------------------------------------------------------------
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
COPY docker/train docker/serve /usr/local/bin/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true
EXPOSE 8080

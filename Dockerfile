# syntax=docker/dockerfile:1
# TabTransformer for SageMaker: `docker run IMAGE train` and `docker run IMAGE serve`.
#
# The GPU and CPU images differ only in build arguments (scripts/image.sh sets them):
#   GPU (default): docker build -t tabtransformer-sagemaker:gpu .
#   CPU:           docker build --build-arg BASE_IMAGE=ubuntu:24.04 \
#                    --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu \
#                    -t tabtransformer-sagemaker:cpu .
# Build-only inputs, never stored in the image:
#   TORCH_WHEELS  a folder holding the torch wheel, mounted read-only for the build
#                 (buildah bud -v DIR:/mnt:ro --build-arg TORCH_WHEELS=/mnt);
#                 empty: torch comes from TORCH_INDEX.
#   secret pip_cert  a CA bundle pip must trust (TLS-intercepting proxies):
#                 --secret id=pip_cert,src=/path/to/ca.pem (docker and buildah).
#
# Python packages come from requirements.lock, the same constraints file `make install`
# uses; only the torch build differs (CUDA or CPU wheel of the version the lock pins).
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---- build stage: compilers live here only (sagemaker-training builds a C extension) ----
FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG TORCH_WHEELS=""
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.lock pyproject.toml /build/
# torch first, at the version the lock pins: from a local wheel folder or from TORCH_INDEX.
# Its own dependencies come with the next step, from the lock.
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && if [ -n "${TORCH_WHEELS}" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS="${TORCH_WHEELS}"; \
    else export PIP_INDEX_URL="${TORCH_INDEX}"; fi \
    && pip install --no-deps --constraint /build/requirements.lock torch
# Then the runtime dependencies named in pyproject.toml (and torch's), pinned by the lock.
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python3 -c "import tomllib; print('\n'.join(tomllib.load(open('/build/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /build/runtime.txt \
    && pip install -c /build/requirements.lock -r /build/runtime.txt
COPY README.md /build/
COPY src /build/src
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && pip install --no-deps /build \
    && site="$(python3 -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
    && find "${site}" -type d -name tests -prune -exec rm -rf {} + \
    && rm -rf "${site}/torch/share/cmake" /build

# ---- runtime stage -----------------------------------------------------------------------
# compile=true needs at run time a C++ compiler and Python's headers (inductor builds its
# CPU kernels, Triton its GPU launcher), openssl (inductor hashes its precompiled header
# with it) and torch's own headers (kept above). tcmalloc replaces glibc's malloc in every
# process (LD_PRELOAD below): glibc maps and unmaps the large attention temporaries of a
# wide table at each step, which made a 74-token training step 1.8x slower on a CPU.
# (Debian names the package libtcmalloc-minimal4, Ubuntu 24.04 libtcmalloc-minimal4t64.)
FROM ${BASE_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-dev g++ openssl \
    && (apt-get install -y --no-install-recommends libtcmalloc-minimal4 \
        || apt-get install -y --no-install-recommends libtcmalloc-minimal4t64) \
    && ln -s "$(find /usr/lib -name libtcmalloc_minimal.so.4 -print -quit)" \
        /usr/local/lib/libtcmalloc_minimal.so.4 \
    && test -e /usr/local/lib/libtcmalloc_minimal.so.4 \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
# The unprivileged user the model server's workers run as (SERVING_USER in
# src/tabtransformer/serving/server.py): a system user and group, no login shell, no home,
# fixed IDs (999: free in the debootstrapped Debian bookworm base and in stock Ubuntu 24.04,
# which the CUDA base is built on; a base that holds it fails here, loudly: pass another
# SERVING_UID).
# No USER instruction, on purpose: SageMaker starts the container as root, and `train` must
# write the /opt/ml mounts (model, output, checkpoints) that SageMaker provides as root.
# `serve` drops privileges itself: started as root, gunicorn binds the port and runs its
# workers (the code that reads requests) as model-server.
ARG SERVING_UID=999
RUN groupadd --system --gid "${SERVING_UID}" model-server \
    && useradd --system --no-log-init --uid "${SERVING_UID}" --gid model-server \
        --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin model-server
COPY --from=build /opt/venv /opt/venv
# /opt/program (SageMaker's place for a container's own programs) holds only the project's
# `train` and `serve` and comes first on PATH: sagemaker-training installs a console script
# named `train` in /opt/venv/bin, and it must never be the one SageMaker starts.
COPY docker/train docker/serve /opt/program/
ENV PATH=/opt/program:/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LD_PRELOAD=/usr/local/lib/libtcmalloc_minimal.so.4 \
    TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD=1099511627776
LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true
EXPOSE 8080
CMD ["echo", "usage: docker run IMAGE train | serve  (SageMaker runs these; /opt/ml mounted)"]

#!/usr/bin/env bash
# Build the image from the Dockerfile with whichever engine this machine has:
# docker when `docker info` answers, else buildah (daemonless: chroot isolation, vfs storage,
# a Debian bookworm base made here with debootstrap because no image registry may be
# reachable). `make image` and tests/test_image.py run this very script.
#
# Usage: scripts/image.sh [TAG]                          (default: tabtransformer-sagemaker:cpu)
# Environment (all optional):
#   VARIANT=cpu|gpu     cpu (default): CPU torch; gpu: CUDA torch (with docker on the
#                       Dockerfile's CUDA base; with buildah on the bookworm base, with
#                       PyPI's CUDA wheel). Only build arguments differ.
#   IMAGE_ENGINE=docker|buildah   force an engine.
#   BASE_IMAGE=REF      base of both stages. Default: with docker: gpu: the Dockerfile's
#                       CUDA image, cpu: ubuntu:24.04; with buildah (cpu and gpu):
#                       localhost/tabtransformer-base:bookworm, made by debootstrap from
#                       DEBIAN_MIRROR (default: the Debian mirror in /etc/apt/sources*).
#                       No CUDA base is needed: PyPI's CUDA torch wheel brings its CUDA
#                       libraries as pip packages (the host's driver comes with the
#                       NVIDIA container runtime, as on SageMaker).
#   TORCH_INDEX=URL     where pip finds torch (default: PyTorch's cpu index; gpu: its
#                       cu128 index with the CUDA base, PyPI's CUDA wheel on bookworm).
#   TORCH_WHEELS=DIR    a folder holding the torch wheel instead (buildah only: mounted
#                       read-only for the build). Default for cpu with buildah: the pip
#                       find-links folder of this machine if it holds the locked torch.
#                       TORCH_WHEELS=none turns the default off.
#   PIP_CERT=FILE       a CA bundle pip must trust (TLS-intercepting proxy); given to the
#                       build as the secret `pip_cert`, never stored. Default: this
#                       machine's PIP_CERT or pip's `global.cert`. PIP_CERT=none: no bundle.
#   BUILDAH_STORAGE_DRIVER=vfs    storage driver for buildah (vfs works everywhere).
set -euo pipefail
cd "$(dirname "$0")/.."

TAG="${1:-tabtransformer-sagemaker:${VARIANT:-cpu}}"
VARIANT="${VARIANT:-cpu}"
BUILDAH=(buildah --storage-driver "${BUILDAH_STORAGE_DRIVER:-vfs}")
BOOKWORM_BASE=localhost/tabtransformer-base:bookworm

say() { echo "image.sh: $*" >&2; }
die() {
    say "$*"
    exit 1
}

engine() {
    if [ -n "${IMAGE_ENGINE:-}" ]; then
        echo "${IMAGE_ENGINE}"
    elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
        echo docker
    elif command -v buildah >/dev/null; then
        echo buildah
    else
        die "no image engine: docker info failed and buildah is not installed.
  Debian/Ubuntu: sudo apt-get install -y buildah debootstrap   (or start a Docker engine)"
    fi
}

pip_setting() { # the host pip's value of an environment variable or config key, or nothing
    local env_name="$1" key="$2" value="${!1:-}"
    if [ -z "${value}" ]; then
        value="$(python3 -m pip config get "${key}" 2>/dev/null || true)"
    fi
    echo "${value}"
}

locked_torch() { sed -n 's/^torch==//p' requirements.lock; }

default_torch_wheels() { # the first find-links folder holding the locked torch wheel
    local folder
    for folder in $(pip_setting PIP_FIND_LINKS global.find-links); do
        if compgen -G "${folder}/torch-$(locked_torch)[+-]*.whl" >/dev/null; then
            echo "${folder}"
            return
        fi
    done
}

debian_mirror() { # the Debian mirror this machine's apt uses, else deb.debian.org
    local mirror
    mirror="$(grep -hoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list \
        /etc/apt/sources.list.d/* 2>/dev/null | head -n1 | tr -d ' ' || true)"
    echo "${DEBIAN_MIRROR:-${mirror:-http://deb.debian.org/debian}}"
}

make_bookworm_base() { # a minimal Debian bookworm image, imported without any registry
    if "${BUILDAH[@]}" inspect --type image "${BOOKWORM_BASE}" >/dev/null 2>&1; then
        return
    fi
    command -v debootstrap >/dev/null ||
        die "debootstrap is needed for the base image: sudo apt-get install -y debootstrap"
    local mirror rootfs container mount
    mirror="$(debian_mirror)"
    rootfs="$(mktemp -d /var/tmp/tabtransformer-rootfs.XXXXXX)"
    say "making ${BOOKWORM_BASE} with debootstrap from ${mirror}"
    debootstrap --variant=minbase bookworm "${rootfs}" "${mirror}" >&2
    printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s-security bookworm-security main\n' \
        "${mirror}" "${mirror}" "${mirror%/}" >"${rootfs}/etc/apt/sources.list"
    rm -rf "${rootfs}"/var/cache/apt/archives/*.deb "${rootfs}"/var/lib/apt/lists/*
    container="$("${BUILDAH[@]}" from scratch)"
    mount="$("${BUILDAH[@]}" mount "${container}")"
    cp -a "${rootfs}/." "${mount}/"
    "${BUILDAH[@]}" umount "${container}" >/dev/null
    "${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --cmd /bin/bash "${container}"
    "${BUILDAH[@]}" commit --format docker "${container}" "${BOOKWORM_BASE}" >/dev/null
    "${BUILDAH[@]}" rm "${container}" >/dev/null
    rm -rf "${rootfs}"
}

ENGINE="$(engine)"
BUILD_ARGS=()
case "${VARIANT}" in cpu | gpu) ;; *) die "VARIANT must be cpu or gpu, not '${VARIANT}'" ;; esac

if [ -z "${BASE_IMAGE:-}" ]; then
    if [ "${ENGINE}" = buildah ]; then # no registry needed: a debootstrapped base
        make_bookworm_base
        BASE_IMAGE="${BOOKWORM_BASE}"
    elif [ "${VARIANT}" = cpu ]; then
        BASE_IMAGE=ubuntu:24.04
    fi # gpu with docker: the Dockerfile's CUDA base
fi

if [ -z "${TORCH_INDEX:-}" ]; then
    if [ "${VARIANT}" = cpu ]; then
        TORCH_INDEX=https://download.pytorch.org/whl/cpu
    elif [ -n "${BASE_IMAGE:-}" ]; then # PyPI's torch is the CUDA build, libraries included
        TORCH_INDEX=https://pypi.org/simple
    else
        TORCH_INDEX=https://download.pytorch.org/whl/cu128
    fi
fi
BUILD_ARGS+=(--build-arg "TORCH_INDEX=${TORCH_INDEX}")
[ -n "${BASE_IMAGE:-}" ] && BUILD_ARGS+=(--build-arg "BASE_IMAGE=${BASE_IMAGE}")

MOUNTS=()
if [ "${ENGINE}" = buildah ]; then
    if [ -z "${TORCH_WHEELS:-}" ] && [ "${VARIANT}" = cpu ]; then
        TORCH_WHEELS="$(default_torch_wheels)"
    fi
    if [ -n "${TORCH_WHEELS:-}" ] && [ "${TORCH_WHEELS}" != none ]; then
        [ -d "${TORCH_WHEELS}" ] || die "TORCH_WHEELS=${TORCH_WHEELS} is not a folder"
        # Over /mnt, which every base has empty: a new mount point would stay in the image.
        MOUNTS+=(-v "$(realpath "${TORCH_WHEELS}"):/mnt:ro")
        BUILD_ARGS+=(--build-arg TORCH_WHEELS=/mnt)
        say "torch $(locked_torch) from the wheel folder ${TORCH_WHEELS} (mounted for the build only)"
    fi
elif [ -n "${TORCH_WHEELS:-}" ] && [ "${TORCH_WHEELS}" != none ]; then
    die "TORCH_WHEELS works with buildah only; with docker set TORCH_INDEX to an index you can reach"
fi

PIP_CERT="${PIP_CERT:-$(pip_setting PIP_CERT global.cert)}"
if [ -n "${PIP_CERT}" ] && [ "${PIP_CERT}" != none ]; then
    [ -f "${PIP_CERT}" ] || die "PIP_CERT=${PIP_CERT} is not a file"
    BUILD_ARGS+=(--secret "id=pip_cert,src=$(realpath "${PIP_CERT}")")
    say "pip in the build trusts ${PIP_CERT} (a build secret: not stored in the image)"
fi

say "building ${TAG} (${VARIANT}) with ${ENGINE}"
start=$(date +%s)
if [ "${ENGINE}" = docker ]; then
    DOCKER_BUILDKIT=1 docker build "${BUILD_ARGS[@]}" -t "${TAG}" .
else
    # No --layers: with vfs every cached layer is a full copy of the filesystem.
    PULL=()
    [ "${BASE_IMAGE:-}" = "${BOOKWORM_BASE}" ] && PULL=(--pull=never)
    "${BUILDAH[@]}" bud --isolation chroot --format docker "${PULL[@]}" \
        "${MOUNTS[@]}" "${BUILD_ARGS[@]}" -t "${TAG}" .
fi
say "built ${TAG} in $(($(date +%s) - start)) s"

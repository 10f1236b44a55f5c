#!/usr/bin/env bash
# Build the images with no container registry:
#   1. base image from Debian packages (debootstrap → docker import), unless BASE_IMAGE is given
#   2. wheelhouses downloaded on this host (containers install them with --no-index)
#   3. the three demo bundles with their validated OpenVINO variants (scripts/demo-bundles.sh)
#   4. chexnet-api-cpu, chexnet-api-gpu and chexnet-nginx, tagged with the product version
# Usage: scripts/build-images.sh [cpu|gpu|all]     (default all; nginx is always built)
# Env:   BASE_IMAGE=python:3.11-slim to use a base the site already has; PYTHON=python3;
#        CALIBRATION=DIR images the variants are quantized on and measured against (default ../shared/data/nih)
set -eEuo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib.sh
source "${ROOT}/scripts/lib.sh"
# shellcheck source=versions.env
source "${ROOT}/scripts/versions.env"
trap_errors

VARIANT="${1:-all}"
case "${VARIANT}" in cpu|gpu|all) ;; *) die "usage: $0 [cpu|gpu|all]" ;; esac
VERSION="$(project_version "${ROOT}")"
REVISION="$(git -C "${ROOT}" rev-parse --short HEAD 2>/dev/null || echo unknown)"
BUILD="${ROOT}/build"
BASE_TAG="chexnet-base:${DEBIAN_SUITE}"
PYTHON="${PYTHON:-${ROOT}/.venv/bin/python}"
MODELS=(cxr10 cxr25 chestxray14)

command -v docker >/dev/null || die "docker is not installed."
docker info >/dev/null 2>&1 || die "the Docker daemon is not running (start dockerd or Docker Desktop)."

build_base() {
  if [[ -n "${BASE_IMAGE:-}" ]]; then
    log "using BASE_IMAGE=${BASE_IMAGE}"
    return
  fi
  BASE_IMAGE="${BASE_TAG}"
  if docker image inspect "${BASE_TAG}" >/dev/null 2>&1; then
    log "base image ${BASE_TAG} exists"
    return
  fi
  command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)."
  local rootfs="${BUILD}/rootfs"
  log "debootstrap ${DEBIAN_SUITE} into ${rootfs} (a few minutes)"
  rm -rf "${rootfs}"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,libgomp1 \
    "${DEBIAN_SUITE}" "${rootfs}" http://deb.debian.org/debian >"${BUILD}/debootstrap.log" 2>&1 \
    || die "debootstrap failed; see ${BUILD}/debootstrap.log"
  rm -rf "${rootfs}"/var/cache/apt/archives/*.deb "${rootfs}"/var/lib/apt/lists/*
  log "docker import → ${BASE_TAG}"
  tar -C "${rootfs}" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "${BASE_TAG}" >/dev/null
  rm -rf "${rootfs}"
}

build_bundles() {
  PYTHON="${PYTHON}" "${ROOT}/scripts/demo-bundles.sh" "${ROOT}/models" "${MODELS[@]}"
}

# A build context per image: wheels/ (third-party), app/ (our wheel) and models/ (the demo bundles).
# The wheelhouse is made afresh each time (pip's cache makes that quick) so that no stale version
# of a package can reach an image.
prepare_context() {
  local variant="$1" extras="$2" context="${BUILD}/context-$1" wheelhouse="${BUILD}/wheelhouse-$1"
  log "wheelhouse for ${variant} (${extras})"
  rm -rf "${wheelhouse}" "${context}"
  PIP_NO_WARN_SCRIPT_LOCATION=1 "${PYTHON}" -m pip wheel --quiet --disable-pip-version-check \
    -c "${ROOT}/requirements/constraints.txt" -w "${wheelhouse}" "${ROOT}[${extras}]"
  mkdir -p "${context}/app"
  mv "${wheelhouse}"/chexnet_onprem-*.whl "${context}/app/"
  cp -al "${wheelhouse}" "${context}/wheels"
  cp -a "${ROOT}/models" "${context}/models"
  chmod -R a+rX "${context}/models"  # the image runs as an unprivileged user
}

build_api() {
  local variant="$1" extras="$2"
  prepare_context "${variant}" "${extras}"
  log "docker build chexnet-api-${variant}:${VERSION}"
  docker build --quiet -f "${ROOT}/chexnet_api_${variant}/Dockerfile" \
    --build-arg "BASE_IMAGE=${BASE_IMAGE}" --build-arg "VERSION=${VERSION}" --build-arg "REVISION=${REVISION}" \
    --build-arg "MODELS=${MODELS[*]}" --build-arg "MIN_NVIDIA_DRIVER=${MIN_NVIDIA_DRIVER}" \
    --build-arg "MIN_NVIDIA_DRIVER_WINDOWS=${MIN_NVIDIA_DRIVER_WINDOWS}" \
    -t "chexnet-api-${variant}:${VERSION}" "${BUILD}/context-${variant}" >/dev/null
  rm -rf "${BUILD}/context-${variant}" "${BUILD}/wheelhouse-${variant}"
  prune_ours
}

# Builder stages and earlier builds of our images that a new tag replaced (dangling) take tens of GB
# for the GPU image: remove them, and only them (they carry our labels).
prune_ours() {
  docker image prune -f --filter label=com.chexnet.stage=build >/dev/null
  docker image prune -f --filter label=com.chexnet.product=chexnet >/dev/null
}

mkdir -p "${BUILD}"
prune_ours
build_base
build_bundles
"${ROOT}/scripts/vendor-js.sh"  # the chart library the /monitor page draws with goes into our wheel
log "docker build chexnet-nginx:${VERSION}"
docker build --quiet --build-arg "BASE_IMAGE=${BASE_IMAGE}" --build-arg "VERSION=${VERSION}" \
  --build-arg "REVISION=${REVISION}" -t "chexnet-nginx:${VERSION}" "${ROOT}/nginx" >/dev/null
[[ "${VARIANT}" == gpu ]] || build_api cpu "cpu,dicom,report"  # report: calibrate runs in the images
[[ "${VARIANT}" == cpu ]] || build_api gpu "torch,dicom,report"
prune_ours
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^chexnet-.*:${VERSION}" >&2
log "built version ${VERSION} (${REVISION})"

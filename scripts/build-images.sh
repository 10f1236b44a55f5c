#!/usr/bin/env bash
# Build the images with no container registry:
#   1. base image from Debian packages (debootstrap → docker import), unless BASE_IMAGE is given
#   2. wheelhouses downloaded on this host, served to the image builds on loopback (--no-index: nothing else)
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

# A build context per image: wheels.txt (the third-party wheels' file names), app/ (our wheel) and models/
# (the demo bundles). The wheelhouse is made afresh each time (pip's cache makes that quick) so that no stale
# version of a package can reach an image; it stays on this host (serve_wheels) rather than in the context.
prepare_context() {
  local variant="$1" extras="$2" context="${BUILD}/context-$1" wheelhouse="${BUILD}/wheelhouse-$1"
  log "wheelhouse for ${variant} (${extras})"
  rm -rf "${wheelhouse}" "${context}"
  PIP_NO_WARN_SCRIPT_LOCATION=1 "${PYTHON}" -m pip wheel --quiet --disable-pip-version-check \
    -c "${ROOT}/requirements/constraints.txt" -w "${wheelhouse}" "${ROOT}[${extras}]"
  mkdir -p "${context}/app"
  mv "${wheelhouse}"/chexnet_onprem-*.whl "${context}/app/"
  (cd "${wheelhouse}" && ls -- *.whl) > "${context}/wheels.txt"
  cp -a "${ROOT}/models" "${context}/models"
  chmod -R a+rX "${context}/models"  # the image runs as an unprivileged user
}

# serve_wheels DIR: serve the wheelhouse to the image builds on 127.0.0.1 (they run with --network host) and set
# WHEELS_URL. Served, the wheels never become a layer, nor the venv a builder stage copied over: the GPU image's
# build took at most 19 GB more disk than before it (wheelhouse, and the venv twice while Docker commits it),
# against 35 GB with the wheels COPYed into a builder stage, on which a CI machine ran out of disk. The first
# free port from 18900 is taken: the same port each time keeps Docker's layer cache.
serve_wheels() {
  local tries=0
  : > "${BUILD}/wheels.port"
  "${PYTHON}" - "$1" > "${BUILD}/wheels.port" 2> "${BUILD}/wheels.log" <<'PY' &
import functools, http.server, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
for port in range(18900, 19000):
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError:
        continue
    print(port, flush=True)
    server.serve_forever()
sys.exit("no free port on 127.0.0.1 between 18900 and 18999 to serve the wheelhouse to docker build")
PY
  WHEELS_SERVER=$!
  while [[ ! -s "${BUILD}/wheels.port" ]] && kill -0 "${WHEELS_SERVER}" 2>/dev/null && (( tries++ < 100 )); do sleep 0.1; done
  [[ -s "${BUILD}/wheels.port" ]] || die "the wheelhouse server did not start; see ${BUILD}/wheels.log"
  WHEELS_URL="http://127.0.0.1:$(cat "${BUILD}/wheels.port")"
}

stop_wheels() {
  [[ -z "${WHEELS_SERVER:-}" ]] || kill "${WHEELS_SERVER}" 2>/dev/null || true
  WHEELS_SERVER=""
}
trap stop_wheels EXIT

build_api() {
  local variant="$1" extras="$2"
  prepare_context "${variant}" "${extras}"
  serve_wheels "${BUILD}/wheelhouse-${variant}"
  log "docker build chexnet-api-${variant}:${VERSION}"
  docker build --quiet --network host -f "${ROOT}/chexnet_api_${variant}/Dockerfile" \
    --build-arg "BASE_IMAGE=${BASE_IMAGE}" --build-arg "WHEELS_URL=${WHEELS_URL}" \
    --build-arg "VERSION=${VERSION}" --build-arg "REVISION=${REVISION}" \
    --build-arg "MODELS=${MODELS[*]}" --build-arg "MIN_NVIDIA_DRIVER=${MIN_NVIDIA_DRIVER}" \
    --build-arg "MIN_NVIDIA_DRIVER_WINDOWS=${MIN_NVIDIA_DRIVER_WINDOWS}" \
    -t "chexnet-api-${variant}:${VERSION}" "${BUILD}/context-${variant}" >/dev/null
  stop_wheels
  rm -rf "${BUILD}/context-${variant}" "${BUILD}/wheelhouse-${variant}"
  prune_ours
}

# Earlier builds of our images that a new tag replaced (dangling) take GBs for the GPU image: remove them, and
# only them (they carry our label).
prune_ours() {
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

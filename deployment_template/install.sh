#!/usr/bin/env bash
# Install (or upgrade) CheXNet from this unpacked offline package. Reads as a table of contents:
#   pre-flight (no impact) → verify and load images → configure (never overwrites .env) → up →
#   wait until healthy → smoke prediction (with --token-file)
# An upgrade that does not turn healthy is rolled back to the previous version.
#
# Usage: sudo ./install.sh [--dir /opt/chexnet] [--variant cpu|gpu] [--token-file FILE]
#                          [--uuid-file /sys/class/dmi/id/product_uuid] [--skip-preflight] [--timeout 600]
set -eEuo pipefail
PACKAGE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../scripts/lib.sh
source "${PACKAGE}/scripts/lib.sh"
trap_errors

DIR=/opt/chexnet
VARIANT="$(cat "${PACKAGE}/VARIANT" 2>/dev/null || echo cpu)"
VERSION="$(cat "${PACKAGE}/VERSION")"
TOKEN_FILE=""
UUID_FILE=/sys/class/dmi/id/product_uuid
PREFLIGHT=1
TIMEOUT=600
API_UID=10001
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --variant) VARIANT="$2"; shift 2 ;;
    --token-file) TOKEN_FILE="$2"; shift 2 ;;
    --uuid-file) UUID_FILE="$2"; shift 2 ;;
    --skip-preflight) PREFLIGHT=0; shift ;;
    --timeout) TIMEOUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
COMPOSE="$(compose_command)" || die "neither 'docker compose' nor 'docker-compose' is installed."

env_value() { sed -n "s/^$1=//p" "${DIR}/.env" 2>/dev/null | tail -n 1; }

compose() {
  local files=(-f docker-compose.yml)
  [[ "$(env_value CHEXNET_VARIANT)" == gpu ]] && files+=(-f docker-compose.gpu.yml)
  (cd "${DIR}" && ${COMPOSE} "${files[@]}" "$@")
}

preflight() {
  [[ "${PREFLIGHT}" -eq 1 ]] || { warn "pre-flight skipped (--skip-preflight)"; return; }
  local ports="80,443"
  [[ -f "${DIR}/.env" ]] && ports="$(env_value HTTP_PORT),$(env_value HTTPS_PORT)"
  # A running stack of ours holds its own ports: that is an upgrade, not a conflict.
  if [[ -f "${DIR}/docker-compose.yml" ]] && [[ -n "$(compose ps -q 2>/dev/null)" ]]; then ports=""; fi
  "${PACKAGE}/scripts/preflight.sh" --variant "${VARIANT}" --dir "${DIR}" --uuid-file "${UUID_FILE}" --ports "${ports}"
}

configure() {
  log "configuring ${DIR}"
  mkdir -p "${DIR}"/{license/keys,models,audit,certs}
  install -m 644 "${PACKAGE}"/docker-compose.yml "${PACKAGE}"/docker-compose.gpu.yml "${PACKAGE}"/.env.example "${DIR}/"
  install -m 644 "${PACKAGE}"/license/keys/*.pem "${DIR}/license/keys/"
  if [[ -f "${DIR}/.env" ]]; then
    log "keeping the existing ${DIR}/.env"
  else
    sed -e "s/^CHEXNET_VERSION=.*/CHEXNET_VERSION=${VERSION}/" -e "s/^CHEXNET_VARIANT=.*/CHEXNET_VARIANT=${VARIANT}/" \
      "${PACKAGE}/.env.example" > "${DIR}/.env"
    log "wrote ${DIR}/.env from .env.example"
  fi
  # The container cannot read the root-only SMBIOS file; the value is copied, read-only to it.
  "${PACKAGE}/scripts/product-uuid.sh" "${UUID_FILE}" > "${DIR}/product_uuid"
  chmod 644 "${DIR}/product_uuid"
  chown -R "${API_UID}:${API_UID}" "${DIR}/audit"
}

set_version() {
  cp "${DIR}/.env" "${DIR}/.env.bak"
  sed -i "s/^CHEXNET_VERSION=.*/CHEXNET_VERSION=$1/" "${DIR}/.env"
}

wait_healthy() {
  local deadline=$((SECONDS + TIMEOUT)) api state
  log "waiting for the API to turn healthy (up to ${TIMEOUT} s)"
  while (( SECONDS < deadline )); do
    api="$(compose ps -q api)"
    state="$(docker inspect -f '{{.State.Health.Status}}' "${api}" 2>/dev/null || echo starting)"
    if [[ "${state}" == healthy ]]; then
      log "API healthy"
      return 0
    fi
    sleep 5
  done
  docker logs --tail 20 "$(compose ps -q api)" >&2 || true
  return 1
}

up_and_wait() {
  log "starting CheXNet ${1}"
  compose up -d --remove-orphans
  wait_healthy
}

smoke() {
  if [[ -z "${TOKEN_FILE}" ]]; then
    warn "no --token-file: skipped the smoke prediction (install the PACS token and rerun, or run the QA script)."
    return
  fi
  log "smoke prediction through nginx"
  compose exec -T api python -m chexnet.api.smoke --url https://nginx < "${TOKEN_FILE}"
}

previous="$(env_value CHEXNET_VERSION)"
preflight
"${PACKAGE}/scripts/load-images.sh" "${PACKAGE}"
configure
if [[ -n "${previous}" && "${previous}" != "${VERSION}" ]]; then
  log "upgrade ${previous} → ${VERSION}"
  set_version "${VERSION}"
  if ! up_and_wait "${VERSION}"; then
    warn "version ${VERSION} did not turn healthy; rolling back to ${previous}"
    set_version "${previous}"
    up_and_wait "${previous}" || die "rollback to ${previous} did not turn healthy either; see 'docker logs'."
    die "upgrade to ${VERSION} failed and was rolled back to ${previous}."
  fi
else
  up_and_wait "${VERSION}" || die "the API did not turn healthy; see the log lines above and ${DIR}/.env."
fi
smoke
port="$(env_value HTTPS_PORT)"
[[ "${port}" != 443 ]] || port=""
log "CheXNet ${VERSION} (${VARIANT}) is running in ${DIR}: https://$(hostname -f 2>/dev/null || hostname)${port:+:${port}}/"

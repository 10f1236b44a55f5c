#!/usr/bin/env bash
# Install (or upgrade) CheXNet from the offline package. Reads as a table of contents:
#   verify the tarball with the vendor's key, in a private copy that is all it uses from then on (no
#   impact) → refuse an older package than the one installed → pre-flight (no impact) → load images →
#   configure (never overwrites .env; writes only the options given) → up → wait until every container
#   runs the new version, healthy → smoke prediction (with --token-file). An upgrade (or a reinstall)
#   that fails at any step after configuring starts is rolled back, and the installer exits 1.
#
# Usage: sudo ./install.sh (--vendor-key vendor_package.crt | --vendor-fingerprint HEX)
#            [--package chexnet-offline-<version>-<variant>.tar.gz (default: the one beside this folder)]
#            [--allow-downgrade] [--dir /opt/chexnet] [--token-file FILE] [--hostname NAME] [--bind ADDRESS]
#            [--https-port 443] [--http-port 80] [--uuid-file /sys/class/dmi/id/product_uuid]
#            [--dicom-destination AE@host:port --dicom-allowed-aes AE,... [--dicom-ae-title CHEXNET]
#             [--dicom-port 11112] [--dicom-bind ADDRESS]]   (the optional DICOM node; needs --token-file)
#            [--site-thresholds site-thresholds.json]   (python -m chexnet calibrate's file for this package's bundle)
#            [--skip-preflight] [--timeout 600]
set -eEuo pipefail
# The unpacked folder: only these two files of it are used (sourced here); everything else comes from the
# verified private copy (PACKAGE, below). What that leaves open: DESIGN.md "Offline package trust".
UNPACKED="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../scripts/lib.sh
source "${UNPACKED}/scripts/lib.sh"
# shellcheck source=../scripts/package-trust.sh
source "${UNPACKED}/scripts/package-trust.sh"
trap_errors

DIR=/opt/chexnet
PACKAGE_FILE=""
WANTED_VARIANT=""
ALLOW_DOWNGRADE=0
TOKEN_FILE=""
SITE_THRESHOLDS=""
UUID_FILE=/sys/class/dmi/id/product_uuid
VENDOR_KEY=""
VENDOR_FINGERPRINT=""
PREFLIGHT=1
TIMEOUT=600
declare -A SETTINGS=()  # .env keys the engineer set on the command line
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --package) PACKAGE_FILE="$2"; shift 2 ;;
    --allow-downgrade) ALLOW_DOWNGRADE=1; shift ;;
    --vendor-key) VENDOR_KEY="$2"; shift 2 ;;
    --vendor-fingerprint) VENDOR_FINGERPRINT="$2"; shift 2 ;;
    --token-file) TOKEN_FILE="$2"; shift 2 ;;
    --site-thresholds)
      # in license/ (mounted read-only into the containers, kept and rolled back with it)
      SITE_THRESHOLDS="$2"; SETTINGS[CHEXNET_SITE_THRESHOLDS]=/etc/chexnet/license/site-thresholds.json; shift 2 ;;
    --uuid-file) UUID_FILE="$2"; shift 2 ;;
    --hostname) [[ "$2" =~ ^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$ ]] || die "--hostname must be a DNS name such as chexnet.hospital.local."
                SETTINGS[TLS_HOSTNAME]="$2"; shift 2 ;;
    --bind) [[ "$2" =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}$ ]] || die "--bind must be an IPv4 address of this server (0.0.0.0 for all)."
            SETTINGS[BIND_ADDRESS]="$2"; shift 2 ;;
    --https-port|--http-port)
      [[ "$2" =~ ^[0-9]{1,5}$ && "$2" -ge 1 && "$2" -le 65535 ]] || die "$1 must be a port number from 1 to 65535."
      if [[ "$1" == --https-port ]]; then SETTINGS[HTTPS_PORT]="$2"; else SETTINGS[HTTP_PORT]="$2"; fi
      shift 2 ;;
    --dicom-destination)
      [[ "$2" =~ ^[A-Za-z0-9._-]{1,16}@[A-Za-z0-9.-]{1,253}:[0-9]{1,5}$ ]] || die "--dicom-destination must say where results go as AE@host:port, e.g. PACS@10.0.0.5:104."
      SETTINGS[CHEXNET_DICOM_DESTINATION]="$2"; SETTINGS[COMPOSE_PROFILES]=dicom; shift 2 ;;
    --dicom-allowed-aes)
      [[ "$2" =~ ^[A-Za-z0-9._-]{1,16}(,[A-Za-z0-9._-]{1,16})*$ ]] || die "--dicom-allowed-aes must be a comma list of AE titles (1 to 16 letters, digits, '.', '_' or '-' each)."
      SETTINGS[CHEXNET_DICOM_ALLOWED_AES]="$2"; shift 2 ;;
    --dicom-ae-title) [[ "$2" =~ ^[A-Za-z0-9._-]{1,16}$ ]] || die "--dicom-ae-title must be 1 to 16 letters, digits, '.', '_' or '-'."
                      SETTINGS[CHEXNET_DICOM_AE_TITLE]="$2"; shift 2 ;;
    --dicom-port) [[ "$2" =~ ^[0-9]{1,5}$ && "$2" -ge 1 && "$2" -le 65535 ]] || die "--dicom-port must be a port number from 1 to 65535."
                  SETTINGS[DICOM_PORT]="$2"; shift 2 ;;
    --dicom-bind) [[ "$2" =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}$ ]] || die "--dicom-bind must be an IPv4 address of this server (0.0.0.0 for all)."
                  SETTINGS[DICOM_BIND_ADDRESS]="$2"; shift 2 ;;
    --variant) WANTED_VARIANT="$2"; shift 2 ;;
    --skip-preflight) PREFLIGHT=0; shift ;;
    --timeout) [[ "$2" =~ ^[0-9]+$ ]] || die "--timeout must be a number of seconds."
               TIMEOUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
COMPOSE="$(compose_command)" || die "neither 'docker compose' nor 'docker-compose' is installed."
[[ -z "${TOKEN_FILE}" || -r "${TOKEN_FILE}" ]] || die "--token-file ${TOKEN_FILE} cannot be read."
# Root reads it: a regular file of root's or of the engineer who ran sudo, never through a link.
[[ -z "${TOKEN_FILE}" ]] || check_site_file "${TOKEN_FILE}" "${SUDO_UID:-0}"
[[ -z "${SITE_THRESHOLDS}" || -r "${SITE_THRESHOLDS}" ]] || die "--site-thresholds ${SITE_THRESHOLDS} cannot be read."
[[ -z "${SITE_THRESHOLDS}" ]] || check_site_file "${SITE_THRESHOLDS}" "${SUDO_UID:-0}"

# The value an option sets, else the one in .env, else the default.
setting() {
  local value="${SETTINGS[$1]:-}"
  [[ -n "${value}" ]] || value="$(env_value "$1")"
  printf '%s\n' "${value:-$2}"
}

compose() {
  local files=(-f docker-compose.yml)
  [[ "$(env_value CHEXNET_VARIANT)" == gpu ]] && files+=(-f docker-compose.gpu.yml)
  (cd "${DIR}" && ${COMPOSE} "${files[@]}" "$@")
}

installed() { [[ -f "${DIR}/docker-compose.yml" && -f "${DIR}/.env" ]]; }

preflight() {
  [[ "${PREFLIGHT}" -eq 1 ]] || { warn "pre-flight skipped (--skip-preflight)"; return; }
  local ports
  ports="$(setting HTTP_PORT 80),$(setting HTTPS_PORT 443)"
  if dicom_enabled; then ports+=",$(setting DICOM_PORT 11112)"; fi
  # A running stack of ours holds its own ports: that is an upgrade, not a conflict.
  if installed && [[ -n "$(compose ps -q 2>/dev/null)" ]]; then ports=""; fi
  bash "${PACKAGE}/scripts/preflight.sh" --variant "${VARIANT}" --dir "${DIR}" --uuid-file "${UUID_FILE}" --ports "${ports}"
}

# What an upgrade may change, kept so that a failed upgrade can put it back.
snapshot() {
  rm -rf "${DIR}/.rollback"
  mkdir -p "${DIR}/.rollback"
  cp -a "${DIR}/docker-compose.yml" "${DIR}/docker-compose.gpu.yml" "${DIR}/.env" "${DIR}/license" "${DIR}/.rollback/"
}

restore_snapshot() {
  cp -a "${DIR}/.rollback/docker-compose.yml" "${DIR}/.rollback/docker-compose.gpu.yml" "${DIR}/.rollback/.env" "${DIR}/"
  rm -rf "${DIR}/license" && cp -a "${DIR}/.rollback/license" "${DIR}/license"
}

configure() {
  local key file
  log "configuring ${DIR}"
  mkdir -p "${DIR}"/{license/keys,models,audit,certs,dicom-spool}
  for file in docker-compose.yml docker-compose.gpu.yml .env.example; do
    copy_listed "${PACKAGE}" "${file}" "${DIR}/${file}" 644
  done
  # The API trusts exactly the licence keys this signed package lists, no others.
  find "${DIR}/license/keys" -mindepth 1 -delete
  while IFS= read -r key; do
    [[ "${key}" != license/keys/*.pem ]] || copy_listed "${PACKAGE}" "${key}" "${DIR}/license/keys/${key##*/}" 644
  done < <(listed_files "${PACKAGE}")
  write_site_env
  if [[ -n "${SITE_THRESHOLDS}" ]]; then
    copy_site_file "${SITE_THRESHOLDS}" "${DIR}/license/site-thresholds.json" "${SUDO_UID:-0}"
    chmod 644 "${DIR}/license/site-thresholds.json"
    check_site_thresholds "${DIR}/license/site-thresholds.json"
  fi
  # The container cannot read the root-only SMBIOS file; the value is copied, read-only to it.
  bash "${PACKAGE}/scripts/product-uuid.sh" "${UUID_FILE}" > "${DIR}/product_uuid"
  chmod 644 "${DIR}/product_uuid"
  # The containers run unprivileged: the API writes the audit log, nginx its self-signed certificate.
  chown -R "${API_UID}:${API_UID}" "${DIR}/audit" "${DIR}/dicom-spool"
  chmod 700 "${DIR}/dicom-spool"  # received images: patient data
  chown -R "${NGINX_UID}:${NGINX_UID}" "${DIR}/certs"
  if dicom_enabled; then
    # The DICOM node is licensed like any client: by a token file, readable by the API user only
    # (by uid: the image's group id is not fixed).
    if [[ -n "${TOKEN_FILE}" ]]; then
      copy_site_file "${TOKEN_FILE}" "${DIR}/license/dicom-node.token" "${SUDO_UID:-0}"
      chown "${API_UID}:${API_UID}" "${DIR}/license/dicom-node.token"
    fi
    [[ -s "${DIR}/license/dicom-node.token" ]] || die "the DICOM node needs a licence token: add --token-file."
    [[ -n "$(setting CHEXNET_DICOM_ALLOWED_AES "")" ]] || die "the DICOM node needs --dicom-allowed-aes (the AE titles allowed to send images)."
  fi
}

# The product's own reader, in the image just loaded, checks the file before anything starts with it: JSON
# that parses, written by calibrate and unedited since. Which bundle it fits is checked as the API loads it
# (an install or upgrade whose bundle it does not fit is not healthy, and is rolled back).
check_site_thresholds() {
  local said
  # -v takes a host path only when it is absolute (a relative --dir would name a volume).
  said="$(docker run --rm --network none -v "$(realpath -- "$1"):/check/site-thresholds.json:ro" "chexnet-api-${VARIANT}:${VERSION}" \
    python -m chexnet.site_thresholds /check/site-thresholds.json "${SITE_THRESHOLDS}" 2>&1)" \
    || die "--site-thresholds cannot be used: ${said}"
  log "site thresholds ${said}"
}

dicom_enabled() {
  [[ ",$(setting COMPOSE_PROFILES ""),"  == *,dicom,* ]]
}

# SERVICE healthy → 0; unhealthy, exited or restarting again and again → 1 at once; else wait up to TIMEOUT.
wait_healthy() {
  local service="$1" deadline=$((SECONDS + TIMEOUT)) id state
  log "waiting for ${service} to turn healthy (up to ${TIMEOUT} s)"
  while (( SECONDS < deadline )); do
    id="$(compose ps -q "${service}")"
    state="$(docker inspect -f '{{.State.Status}}/{{.RestartCount}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}' "${id}" 2>/dev/null || echo starting/0/)"
    case "${state}" in
      */healthy) log "${service} healthy"; return 0 ;;
      */unhealthy|exited/*|dead/*|*/[3-9]/*|*/[1-9][0-9]*/*) break ;;
    esac
    sleep 3
  done
  warn "${service} did not turn healthy (state ${state}); its last log lines:"
  docker logs --tail 20 "$(compose ps -q "${service}")" >&2 || true
  return 1
}

# Every container of the stack runs VERSION's image: running, and healthy where it has a health check.
runs_version() {
  local version="$1" service id state expected
  for service in api nginx $(dicom_enabled && echo dicom-node); do
    expected="chexnet-api-${VARIANT}:${version}"
    [[ "${service}" != nginx ]] || expected="chexnet-nginx:${version}"
    id="$(compose ps -q "${service}")"
    state="$(docker inspect -f '{{.Config.Image}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "${id:-none}" 2>/dev/null)" || state="absent"
    [[ "${state}" == "${expected} running healthy" || "${state}" == "${expected} running none" ]] || {
      warn "${service} is not ${expected}, running and healthy (it is: ${state})"
      return 1
    }
  done
}

up_and_wait() {
  log "starting CheXNet ${1}"
  compose up -d --remove-orphans || { warn "docker compose up -d failed for ${1} (its message is above)"; return 1; }
  wait_healthy api || return 1
  if dicom_enabled; then
    wait_healthy dicom-node || return 1
  fi
  runs_version "$1"
}

# What follows the snapshot, run in a subshell with errexit on: any failing command there fails the whole
# (an 'if' or '||' around it would switch errexit off inside, and a failure would pass as done).
configure_and_start() {
  configure
  up_and_wait "${VERSION}" || exit 1
}

smoke() {
  if [[ -z "${TOKEN_FILE}" ]]; then
    warn "no --token-file: skipped the smoke prediction (install the PACS token and rerun, or run the QA script)."
    return
  fi
  log "smoke prediction through nginx"
  dd if="${TOKEN_FILE}" iflag=nofollow,nonblock status=none | compose exec -T api python -m chexnet.api.smoke --url https://nginx:8443
}

one_at_a_time /run/chexnet-install.lock
trap remove_staging EXIT
stage_package "${UNPACKED}" "${PACKAGE_FILE}" "${VENDOR_KEY}" "${VENDOR_FINGERPRINT}"
PACKAGE="${STAGED}"
VARIANT="$(package_value VARIANT '^(cpu|gpu)$')"
VERSION="$(package_value VERSION '^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$')"
[[ -z "${WANTED_VARIANT}" || "${WANTED_VARIANT}" == "${VARIANT}" ]] \
  || die "this is the ${VARIANT} package; use the chexnet-offline-*-${WANTED_VARIANT} package for --variant ${WANTED_VARIANT}."
# An existing .env is checked whole before any of its values is used (pre-flight reads the ports).
[[ ! -e "${DIR}/.env" && ! -L "${DIR}/.env" ]] || check_site_env
check_not_older "${DIR}" "${ALLOW_DOWNGRADE}"
preflight
load_images "${PACKAGE}"
if installed; then
  previous="$(env_value CHEXNET_VERSION)"
  snapshot
  trap - ERR
  set +e
  (set -e; trap_errors; configure_and_start)
  status=$?
  set -e
  trap_errors
  if (( status != 0 )); then
    warn "version ${VERSION} did not start as it should; rolling back to ${previous}"
    restore_snapshot
    # What runs now is what the restored .env says, not what this command line asked for.
    SETTINGS=()
    VARIANT="$(env_value CHEXNET_VARIANT)"
    up_and_wait "${previous}" || die "rollback to ${previous} did not turn healthy either; see 'docker logs'."
    [[ "${previous}" != "${VERSION}" ]] || die "installing ${VERSION} again with these options failed; the previous configuration was put back and runs again."
    die "upgrade to ${VERSION} failed and was rolled back to ${previous}."
  fi
  [[ "${previous}" == "${VERSION}" ]] || log "upgraded ${previous} → ${VERSION}"
else
  configure
  up_and_wait "${VERSION}" || die "the API did not turn healthy; see the log lines above and ${DIR}/.env."
fi
record_installed "${DIR}"
smoke
port="$(setting HTTPS_PORT 443)"
[[ "${port}" != 443 ]] || port=""
log "CheXNet ${VERSION} (${VARIANT}) is running in ${DIR}: https://$(setting TLS_HOSTNAME chexnet.local)${port:+:${port}}/"

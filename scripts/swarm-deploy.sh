#!/usr/bin/env bash
# Deploy (or upgrade) CheXNet as the Swarm stack 'chexnet', from a swarm manager. Reads as a table of
# contents: verify the tarball with the vendor's key, in a private copy that is all it uses from then on
# → refuse an older package than the one deployed → check the swarm, the node list and that the
# images are loaded here (scripts/swarm-node.sh on every node first) → configure the folder (keeps .env)
# → remove a single-server install's api and nginx in the same folder → docker stack deploy → wait until every task of
# the new version is healthy, or until Swarm has rolled an update back (then exit 1) → smoke prediction.
#
# Usage: sudo scripts/swarm-deploy.sh (--vendor-key vendor_package.crt | --vendor-fingerprint HEX)
#            --nodes nodes.txt [--token-file FILE] [--dir /opt/chexnet] [--replicas 2] [--site-thresholds FILE]
#            [--package chexnet-offline-<version>-<variant>.tar.gz] [--allow-downgrade]
#            [--hostname NAME] [--https-port 443] [--http-port 80] [--no-publish] [--timeout 900]
#   nodes.txt: the line scripts/swarm-node.sh printed on each node, '<node hostname> <product_uuid>'.
set -eEuo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "${HERE}/lib.sh"
# shellcheck source=package-trust.sh
source "${HERE}/package-trust.sh"
trap_errors

STACK=chexnet
DIR=/opt/chexnet
PACKAGE_FILE=""
ALLOW_DOWNGRADE=0
VENDOR_KEY=""
VENDOR_FINGERPRINT=""
NODES=""
TOKEN_FILE=""
SITE_THRESHOLDS=""
PUBLISH=1
TIMEOUT=900
declare -A SETTINGS=()  # .env keys set on the command line
while [[ $# -gt 0 ]]; do
  case "$1" in
    --vendor-key) VENDOR_KEY="$2"; shift 2 ;;
    --vendor-fingerprint) VENDOR_FINGERPRINT="$2"; shift 2 ;;
    --nodes) NODES="$2"; shift 2 ;;
    --package) PACKAGE_FILE="$2"; shift 2 ;;
    --allow-downgrade) ALLOW_DOWNGRADE=1; shift ;;
    --token-file) TOKEN_FILE="$2"; shift 2 ;;
    --site-thresholds)  # python -m chexnet calibrate's file: into license/, then a config of the stack
      SITE_THRESHOLDS="$2"; SETTINGS[CHEXNET_SITE_THRESHOLDS]=/etc/chexnet/license/site-thresholds.json; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    --replicas) [[ "$2" =~ ^[1-9][0-9]?$ ]] || die "--replicas must be a number of API tasks from 1 to 99."
                SETTINGS[API_REPLICAS]="$2"; shift 2 ;;
    --hostname) [[ "$2" =~ ^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$ ]] || die "--hostname must be a DNS name such as chexnet.region.local."
                SETTINGS[TLS_HOSTNAME]="$2"; shift 2 ;;
    --https-port|--http-port)
      [[ "$2" =~ ^[0-9]{1,5}$ && "$2" -ge 1 && "$2" -le 65535 ]] || die "$1 must be a port number from 1 to 65535."
      if [[ "$1" == --https-port ]]; then SETTINGS[HTTPS_PORT]="$2"; else SETTINGS[HTTP_PORT]="$2"; fi
      shift 2 ;;
    --no-publish) PUBLISH=0; shift ;;
    --timeout) [[ "$2" =~ ^[0-9]+$ ]] || die "--timeout must be a number of seconds."
               TIMEOUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
DIR="$(realpath -m -- "${DIR}")"  # docker run -v and the stack's bind mounts take only absolute host paths
[[ -n "${NODES}" ]] || die "give the cluster's node list with --nodes nodes.txt (the line scripts/swarm-node.sh printed on each node)."
[[ -r "${NODES}" ]] || die "--nodes ${NODES} cannot be read."
[[ -z "${TOKEN_FILE}" || -r "${TOKEN_FILE}" ]] || die "--token-file ${TOKEN_FILE} cannot be read."
# Root reads these: regular files of root's or of the engineer who ran sudo, never through a link. The
# node list is read once, here, and used from memory.
check_site_file "${NODES}" "${SUDO_UID:-0}"
NODE_LIST="$(dd if="${NODES}" iflag=nofollow,nonblock status=none)" || die "--nodes ${NODES} was replaced while it was read; run this again."
[[ -z "${TOKEN_FILE}" ]] || check_site_file "${TOKEN_FILE}" "${SUDO_UID:-0}"
[[ -z "${SITE_THRESHOLDS}" || -r "${SITE_THRESHOLDS}" ]] || die "--site-thresholds ${SITE_THRESHOLDS} cannot be read."
[[ -z "${SITE_THRESHOLDS}" ]] || check_site_file "${SITE_THRESHOLDS}" "${SUDO_UID:-0}"

check_swarm() {
  local state node
  state="$(docker info --format '{{.Swarm.LocalNodeState}}/{{.Swarm.ControlAvailable}}')" || die "Docker is not running on this node."
  [[ "${state}" == active/true ]] || die "this node is not a swarm manager; run 'docker swarm init' here first (field guide, Regional centre)."
  for image in "${IMAGES[@]}"; do
    docker image inspect "${image}" >/dev/null 2>&1 || die "image ${image} is not loaded on this node; run scripts/swarm-node.sh here (and on every node) first."
  done
  # Every node that may run an API task must be in the node list, or that task can never be licensed.
  while IFS= read -r node; do
    awk -v n="${node,,}" 'tolower($1) == n { found = 1 } END { exit !found }' <<< "${NODE_LIST}" \
      || die "node ${node} is in the swarm but not in ${NODES}; add the line scripts/swarm-node.sh printed on it."
  done < <(docker node ls --format '{{.Hostname}}')
}

# Each line as swarm-node.sh prints it; running that again appends the same line again (no harm), but
# one node with two product_uuids is refused.
check_nodes() {
  local line name uuid
  declare -A seen=()
  while IFS= read -r line; do
    [[ -z "${line// /}" || "${line}" == \#* ]] && continue
    [[ "${line}" =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?\ +[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\ *$ ]] \
      || die "${NODES}: '${line:0:80}' is not '<node hostname> <product_uuid>' as scripts/swarm-node.sh prints it."
    read -r name uuid <<< "${line}"
    [[ -z "${seen[${name,,}]:-}" || "${seen[${name,,}]}" == "${uuid,,}" ]] \
      || die "${NODES} lists node ${name} twice with different product_uuids; keep the line scripts/swarm-node.sh printed last."
    seen[${name,,}]="${uuid,,}"
  done <<< "${NODE_LIST}"
}

# What root will read in an existing install folder, checked before anything there changes: .env whole,
# and the certificate (nginx's uid writes certs/), revocation list and folders as plain files of their owners.
check_site() {
  local name
  for name in certs license swarm; do
    [[ ! -L "${DIR}/${name}" ]] || die "${DIR}/${name} is a link, which is refused; make it a folder of its own."
  done
  [[ ! -e "${DIR}/.env" && ! -L "${DIR}/.env" ]] || check_site_env
  for name in certs/server.crt certs/server.key; do
    [[ ! -e "${DIR}/${name}" && ! -L "${DIR}/${name}" ]] || check_site_file "${DIR}/${name}" "${NGINX_UID}"
  done
  [[ ! -e "${DIR}/license/revocations.jwt" && ! -L "${DIR}/license/revocations.jwt" ]] || check_site_file "${DIR}/license/revocations.jwt"
}

# No certificate in DIR/certs: nginx's own entrypoint makes the self-signed one for TLS_HOSTNAME, as on
# a single server, once; every nginx task then serves it (put your own server.crt/server.key there instead).
# The stack's config and secret are root's private copies in DIR/swarm: nothing nginx's uid swaps into
# certs/ afterwards is read.
certificate() {
  local name
  if ! [[ -s "${DIR}/certs/server.crt" && -s "${DIR}/certs/server.key" ]]; then
    log "no certificate in ${DIR}/certs: nginx makes a self-signed one"
    chown -R "${NGINX_UID}:${NGINX_UID}" "${DIR}/certs"
    docker run --rm --network none --cap-drop ALL -v "${DIR}/certs:/etc/nginx/certs" \
      -e TLS_HOSTNAME="$(env_value TLS_HOSTNAME)" -e NGINX_API_TASKS=tasks.api "${IMAGES[1]}" true
  fi
  for name in server.crt server.key; do
    copy_site_file "${DIR}/certs/${name}" "${DIR}/swarm/${name}" "${NGINX_UID}"
  done
}

configure() {
  local key file said
  log "configuring ${DIR}"
  mkdir -p "${DIR}"/{license/keys,certs,swarm}
  for file in docker-stack.yml docker-stack.gpu.yml docker-stack.ports.yml .env.example; do
    copy_listed "${PACKAGE}" "${file}" "${DIR}/${file}" 644
  done
  write_site_env
  # What the stack's configs are made of: the licence keys this signed package lists (one key ring
  # file: '# kid <kid>' before each key), the node list, the revocation list if the site has one.
  find "${DIR}/license/keys" -mindepth 1 -delete
  : > "${DIR}/swarm/license-keys.pem"
  while IFS= read -r key; do
    [[ "${key}" == license/keys/*.pem ]] || continue
    copy_listed "${PACKAGE}" "${key}" "${DIR}/license/keys/${key##*/}" 644
    printf '# kid %s\n' "$(basename "${key}" .pem)" >> "${DIR}/swarm/license-keys.pem"
    cat "${DIR}/license/keys/${key##*/}" >> "${DIR}/swarm/license-keys.pem"
  done < <(listed_files "${PACKAGE}")
  grep -v '^[[:space:]]*\(#\|$\)' <<< "${NODE_LIST}" | awk '!seen[tolower($1)]++' > "${DIR}/swarm/product_uuids"
  if [[ -e "${DIR}/license/revocations.jwt" || -L "${DIR}/license/revocations.jwt" ]]; then
    copy_site_file "${DIR}/license/revocations.jwt" "${DIR}/swarm/revocations.jwt"
  else
    echo "# no revocation list on this site" > "${DIR}/swarm/revocations.jwt"  # Swarm refuses an empty config
  fi
  # The site's thresholds (install.sh's file, or --site-thresholds), checked by the product's own reader in
  # the image this deploy runs; which bundle they fit is checked as each API task loads it.
  if [[ -n "${SITE_THRESHOLDS}" ]]; then
    copy_site_file "${SITE_THRESHOLDS}" "${DIR}/license/site-thresholds.json" "${SUDO_UID:-0}"
    chmod 644 "${DIR}/license/site-thresholds.json"
  fi
  if [[ -e "${DIR}/license/site-thresholds.json" || -L "${DIR}/license/site-thresholds.json" ]]; then
    copy_site_file "${DIR}/license/site-thresholds.json" "${DIR}/swarm/site-thresholds.json"
    chmod 644 "${DIR}/swarm/site-thresholds.json"
    said="$(docker run --rm --network none -v "${DIR}/swarm/site-thresholds.json:/check/site-thresholds.json:ro" \
      "${IMAGES[0]}" python -m chexnet.site_thresholds /check/site-thresholds.json "${DIR}/license/site-thresholds.json" 2>&1)" \
      || die "--site-thresholds cannot be used: ${said}"
    log "site thresholds ${said}"
  else
    echo "# no site thresholds on this site" > "${DIR}/swarm/site-thresholds.json"  # read only if .env names it
  fi
  certificate
}

# A single-server install in the same folder gives way to the stack (same ports, same settings).
stop_single_server() {
  local compose
  [[ -f "${DIR}/docker-compose.yml" ]] || return 0
  compose="$(compose_command)" || return 0
  if [[ -n "$(cd "${DIR}" && ${compose} ps -q api nginx 2>/dev/null)" ]]; then
    log "removing the single-server api and nginx containers in ${DIR}: the stack takes over (a DICOM node keeps running)"
    (cd "${DIR}" && ${compose} rm -sf api nginx)
  fi
}

# What the stack files take from the environment: the settings of .env they name (docker stack deploy
# reads no .env itself), and the content hashes the stack names its configs by.
export_settings() {
  local key value
  # shellcheck disable=SC2016  # grep looks for the literal '${NAME' the stack files hold
  while IFS= read -r key; do
    value="$(env_value "${key}")"
    check_env_value "${key}" "${value}"  # whole, again: this is what Swarm takes
    export "${key}=${value}"
  done < <(grep -ho '\${[A-Z][A-Z0-9_]*' "${DIR}"/docker-stack*.yml | cut -c3- | sort -u)
  sha() { sha256sum "${DIR}/$1" | cut -c1-12; }
  LICENSE_KEYS_SHA="$(sha swarm/license-keys.pem)"; PRODUCT_UUIDS_SHA="$(sha swarm/product_uuids)"
  SITE_THRESHOLDS_SHA="$(sha swarm/site-thresholds.json)"
  REVOCATIONS_SHA="$(sha swarm/revocations.jwt)"; TLS_CERTIFICATE_SHA="$(sha swarm/server.crt)"; TLS_KEY_SHA="$(sha swarm/server.key)"
  export LICENSE_KEYS_SHA PRODUCT_UUIDS_SHA REVOCATIONS_SHA TLS_CERTIFICATE_SHA TLS_KEY_SHA SITE_THRESHOLDS_SHA
}

# SERVICE converged on this deploy → 0; rolled back by Swarm → 1; else wait up to TIMEOUT.
wait_converged() {
  local service="${STACK}_$1" deadline=$((SECONDS + TIMEOUT)) update replicas
  log "waiting for ${service} (up to ${TIMEOUT} s)"
  while (( SECONDS < deadline )); do
    update="$(docker service inspect --format '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}' "${service}")"
    replicas="$(docker service ls --filter "name=${service}" --format '{{.Name}} {{.Replicas}}' | awk -v s="${service}" '$1 == s { print $2 }')"
    case "${update}" in
      rollback_completed|rollback_paused)
        warn "$(docker service inspect --format '{{.UpdateStatus.Message}}' "${service}")"
        return 1 ;;
      ''|completed)
        if [[ "${replicas%%/*}" == "${replicas##*/}" && "$(running_version "${service}")" == "${VERSION}" ]]; then
          log "${service}: ${replicas} tasks healthy"; return 0
        fi ;;
    esac
    sleep 3
  done
  die "${service} did not converge in ${TIMEOUT} s; see 'docker service ps ${service} --no-trunc'."
}

running_version() {
  docker service inspect --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}' "$1" | sed 's/@.*//; s/.*://'
}

# Configs and secrets of earlier deploys that no service uses any more (Swarm refuses to remove one in use).
prune_configs() {
  docker config ls --filter "label=com.docker.stack.namespace=${STACK}" -q | xargs -r docker config rm >/dev/null 2>&1 || true
  docker secret ls --filter "label=com.docker.stack.namespace=${STACK}" -q | xargs -r docker secret rm >/dev/null 2>&1 || true
}

smoke() {
  if [[ -z "${TOKEN_FILE}" ]]; then
    warn "no --token-file: skipped the smoke prediction (rerun with the cluster's token, or run the QA script)."
    return
  fi
  log "smoke prediction through nginx"
  dd if="${TOKEN_FILE}" iflag=nofollow,nonblock status=none \
    | docker run --rm -i --network "${STACK}_front" --read-only --cap-drop ALL "${IMAGES[0]}" \
        python -m chexnet.api.smoke --url https://nginx:8443
}

one_at_a_time /run/chexnet-install.lock
trap remove_staging EXIT
stage_package "$(cd "${HERE}/.." && pwd)" "${PACKAGE_FILE}" "${VENDOR_KEY}" "${VENDOR_FINGERPRINT}"
PACKAGE="${STAGED}"
VARIANT="$(package_value VARIANT '^(cpu|gpu)$')"
VERSION="$(package_value VERSION '^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$')"
IMAGES=("chexnet-api-${VARIANT}:${VERSION}" "chexnet-nginx:${VERSION}")
check_nodes
check_swarm
check_site
check_not_older "${DIR}" "${ALLOW_DOWNGRADE}"
previous=""
if docker service inspect "${STACK}_api" >/dev/null 2>&1; then
  previous="$(running_version "${STACK}_api")"
fi
configure
stop_single_server
export_settings
files=(-c docker-stack.yml)
[[ "${VARIANT}" != gpu ]] || files+=(-c docker-stack.gpu.yml)
[[ "${PUBLISH}" -eq 0 ]] || files+=(-c docker-stack.ports.yml)
log "docker stack deploy: CheXNet ${VERSION} (${VARIANT})${previous:+, rolling update from ${previous}}"
# --resolve-image never: the images are loaded on every node, and there is no registry to ask.
(cd "${DIR}" && docker stack deploy --resolve-image never "${files[@]}" "${STACK}")
for service in api nginx; do
  wait_converged "${service}" && continue
  [[ -n "${previous}" ]] || die "version ${VERSION} did not turn healthy; see 'docker service ps ${STACK}_${service} --no-trunc'."
  # Swarm rolled this service back; the other one goes back too, so the two run the same version.
  for other in api nginx; do
    if [[ "$(running_version "${STACK}_${other}")" != "${previous}" ]]; then
      docker service rollback --detach "${STACK}_${other}" >/dev/null
    fi
  done
  set_env CHEXNET_VERSION "${previous}"
  die "version ${VERSION} did not turn healthy: Swarm rolled the stack back to ${previous}, which is serving (${DIR}/.env says ${previous} again)."
done
prune_configs
record_installed "${DIR}"
smoke
port="$(env_value HTTPS_PORT)"
[[ "${port:-443}" != 443 ]] || port=""
if [[ "${PUBLISH}" -eq 1 ]]; then
  log "CheXNet ${VERSION} (${VARIANT}) runs as the swarm stack ${STACK}: https://$(env_value TLS_HOSTNAME)${port:+:${port}}/ on every node"
else
  log "CheXNet ${VERSION} (${VARIANT}) runs as the swarm stack ${STACK}, unpublished: on the network ${STACK}_front as https://nginx:8443/"
fi

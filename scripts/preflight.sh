#!/usr/bin/env bash
# Pre-flight, no impact yet: checks this host before anything is loaded or started.
# Usage: preflight.sh [--variant cpu|gpu] [--dir INSTALL_DIR] [--uuid-file FILE]
set -eEuo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "${HERE}/lib.sh"
# shellcheck source=versions.env
source "${HERE}/versions.env"
trap_errors

VARIANT=cpu
DIR="$(pwd)"
UUID_FILE=/sys/class/dmi/id/product_uuid
PORTS=(80 443)
while [[ $# -gt 0 ]]; do
  case "$1" in
    --variant) VARIANT="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    --uuid-file) UUID_FILE="$2"; shift 2 ;;
    --ports) IFS=, read -r -a PORTS <<<"$2"; shift 2 ;;
    *) die "unknown option $1 (use --variant, --dir, --uuid-file, --ports)" ;;
  esac
done
FAILED=0
ok() { printf '  ok    %s\n' "$*" >&2; }
bad() { printf '  FAIL  %s\n' "$*" >&2; FAILED=1; }

# version_ge A B: true when version A >= B (numeric, dot-separated)
version_ge() { [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" == "$2" ]]; }

log "pre-flight checks (nothing is changed)"
if ! command -v docker >/dev/null; then
  bad "docker is not installed"
else
  docker_version="$(docker version --format '{{.Server.Version}}' 2>/dev/null || true)"
  if [[ -z "${docker_version}" ]]; then
    bad "the Docker daemon is not running or not reachable by this user"
  elif version_ge "${docker_version%%[-+]*}" "${MIN_DOCKER_VERSION}"; then
    ok "Docker ${docker_version}"
  else
    bad "Docker ${docker_version} is older than ${MIN_DOCKER_VERSION}"
  fi
fi

if compose="$(compose_command)"; then
  compose_version="$(${compose} version --short 2>/dev/null | sed 's/^v//')"
  minimum="${MIN_COMPOSE_V1_VERSION}"
  [[ "${compose_version}" == 1.* ]] || minimum="${MIN_COMPOSE_V2_VERSION}"
  if version_ge "${compose_version}" "${minimum}"; then ok "Compose ${compose_version} (${compose})"; else bad "Compose ${compose_version} is older than ${minimum}"; fi
else
  bad "neither 'docker compose' (v2) nor 'docker-compose' (v1) is installed"
fi

# Nothing is created here: the free space is that of the nearest folder that exists.
existing="${DIR}"
while [[ ! -d "${existing}" ]]; do existing="$(dirname "${existing}")"; done
free_gb="$(df -Pk "${existing}" 2>/dev/null | awk 'NR==2 {print int($4 / 1048576)}')"
if [[ -n "${free_gb}" && "${free_gb}" -ge "${MIN_DISK_GB}" ]]; then ok "${free_gb} GB free in ${DIR}"; else bad "only ${free_gb:-?} GB free in ${DIR}; ${MIN_DISK_GB} GB needed"; fi

ram_gb="$(awk '/MemTotal/ {print int($2 / 1048576)}' /proc/meminfo 2>/dev/null || echo 0)"
if [[ "${ram_gb}" -ge "${MIN_RAM_GB}" ]]; then ok "${ram_gb} GB RAM"; else bad "${ram_gb} GB RAM; ${MIN_RAM_GB} GB needed"; fi

for port in "${PORTS[@]}"; do
  if command -v ss >/dev/null && ss -Hltn "sport = :${port}" 2>/dev/null | grep -q .; then
    bad "port ${port} is already in use (stop that service or set HTTPS_PORT/HTTP_PORT in .env)"
  else
    ok "port ${port} free"
  fi
done

if [[ -r "${UUID_FILE}" ]] && uuid="$("${HERE}/product-uuid.sh" "${UUID_FILE}" 2>/dev/null)"; then
  ok "product_uuid ${uuid}"
elif [[ -e "${UUID_FILE}" ]]; then
  bad "${UUID_FILE} is not readable: run the installer as root"
else
  bad "${UUID_FILE} does not exist (a VM without SMBIOS?): enable the BIOS UUID in the hypervisor, or ask the vendor how to bind this VM"
fi

if [[ "${VARIANT}" == gpu ]]; then
  if driver="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1)" && [[ -n "${driver}" ]]; then
    if version_ge "${driver}" "${MIN_NVIDIA_DRIVER}"; then ok "NVIDIA driver ${driver}"; else bad "NVIDIA driver ${driver} is older than ${MIN_NVIDIA_DRIVER}"; fi
  else
    bad "nvidia-smi found no GPU/driver; install the NVIDIA driver (>= ${MIN_NVIDIA_DRIVER}) and the NVIDIA Container Toolkit, or use --variant cpu"
  fi
fi

[[ "${FAILED}" -eq 0 ]] || die "pre-flight found problems (above); nothing was changed."
log "pre-flight passed"

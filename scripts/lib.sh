# shellcheck shell=bash
# Shared shell helpers: sourced by the scripts in this folder (not run on its own).
# Every script: set -eEuo pipefail, an ERR trap that names file:line, and one-sentence failures.

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
on_error() { printf 'error: %s failed at %s:%s (exit %s)\n' "$1" "$2" "$3" "$4" >&2; }
trap_errors() { trap 'on_error "${BASH_COMMAND}" "${BASH_SOURCE[0]}" "${LINENO}" "$?"' ERR; }

# The images' unprivileged users (chexnet_api_*/Dockerfile, nginx/Dockerfile), who own what they write on the host.
# shellcheck disable=SC2034  # used by the scripts that source this file
API_UID=10001
# shellcheck disable=SC2034
NGINX_UID=10002

# The version of the product: the one in pyproject.toml.
project_version() {
  sed -n 's/^version = "\(.*\)"/\1/p' "$1/pyproject.toml" | head -n 1
}

# Compose v2 plugin ("docker compose") or v1 ("docker-compose"), whichever exists; prints the command.
compose_command() {
  if docker compose version >/dev/null 2>&1; then
    echo "docker compose"
  elif command -v docker-compose >/dev/null 2>&1; then
    echo "docker-compose"
  else
    return 1
  fi
}

# KEY's value in the site's ${DIR}/.env (DIR: the install folder of the calling script), empty if unset.
env_value() {
  [[ -f "${DIR}/.env" ]] || return 0
  sed -n "s/^$1=//p" "${DIR}/.env" | tail -n 1
}

# Set KEY=VALUE in ${DIR}/.env, in place of the line that sets KEY, or added at the end.
set_env() {
  if grep -q "^$1=" "${DIR}/.env"; then
    sed -i "s|^$1=.*|$1=$2|" "${DIR}/.env"
  else
    printf '%s=%s\n' "$1" "$2" >> "${DIR}/.env"
  fi
}

# The site's ${DIR}/.env: an existing one is kept (a copy in .env.bak), else made from the package's
# .env.example; then CHEXNET_VERSION, CHEXNET_VARIANT and the SETTINGS the command line gave are set.
write_site_env() {
  local name
  if [[ -f "${DIR}/.env" ]]; then
    log "keeping the existing ${DIR}/.env (a copy is in .env.bak)"
    cp "${DIR}/.env" "${DIR}/.env.bak"
  else
    cp "${PACKAGE}/.env.example" "${DIR}/.env"
    log "wrote ${DIR}/.env from .env.example"
  fi
  chmod 600 "${DIR}/.env"
  set_env CHEXNET_VERSION "${VERSION}"
  set_env CHEXNET_VARIANT "${VARIANT}"
  for name in "${!SETTINGS[@]}"; do
    set_env "${name}" "${SETTINGS[${name}]}"
    log "set ${name}=${SETTINGS[${name}]} in ${DIR}/.env"
  done
}

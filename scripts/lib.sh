# shellcheck shell=bash
# Shared shell helpers: sourced by the scripts in this folder (not run on its own).
# Every script: set -eEuo pipefail, an ERR trap that names file:line, and one-sentence failures.

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
on_error() { printf 'error: %s failed at %s:%s (exit %s)\n' "$1" "$2" "$3" "$4" >&2; }
trap_errors() { trap 'on_error "${BASH_COMMAND}" "${BASH_SOURCE[0]}" "${LINENO}" "$?"' ERR; }

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

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

# --- values from .env: each checked whole before a shell, compose, Swarm or nginx takes it ---------------
# A value may hold only these characters (listed one by one: no locale widens the set): what paths, lists,
# AE@host:port and sizes need, and nothing a shell, compose's .env parser or nginx would interpret.
ENV_VALUE_CHARS='abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._,:@/+=-'
# These settings may also hold '>', which their own syntax needs (CHEXNET_PRIORITY_RULES: code>=probability:level);
# their values only ever reach compose, Swarm and the service, never a shell unquoted or nginx.
ENV_VALUE_GT_KEYS='CHEXNET_PRIORITY_RULES'
DNS_NAME='^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$'

# in_range VALUE MIN MAX: VALUE is a whole number (no sign, no leading zero, at most 6 digits) in MIN..MAX.
in_range() {
  [[ "$1" =~ ^(0|[1-9][0-9]{0,5})$ ]] && (( $1 >= $2 && $1 <= $3 ))
}

# check_env_value KEY VALUE: dies with one sentence naming KEY unless the whole VALUE (not its first line)
# is one KEY may take. Empty is the default the compose and stack files, and nginx, give it.
check_env_value() {
  local key="$1" value="$2" rule="" chars="${ENV_VALUE_CHARS}"
  [[ " ${ENV_VALUE_GT_KEYS} " != *" ${key} "* ]] || chars+='>'
  [[ "${value}" != *[!"${chars}"]* && "${#value}" -le 1024 ]] \
    || die "${key} in ${DIR}/.env may hold only letters, digits and . _ , : @ / + = - (no quotes, '\$', backquotes, spaces or line breaks, at most 1024 characters); write the value plainly."
  [[ -n "${value}" ]] || return 0
  case "${key}" in
    HTTPS_PORT|HTTP_PORT|DICOM_PORT) in_range "${value}" 1 65535 || rule="a port number from 1 to 65535" ;;
    BIND_ADDRESS|DICOM_BIND_ADDRESS)
      [[ "${value}" =~ ^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$ ]] \
        || rule="an IPv4 address of this server (0.0.0.0 for all)" ;;
    TLS_HOSTNAME|NGINX_API_TASKS) [[ "${value}" =~ ${DNS_NAME} ]] || rule="a DNS name such as chexnet.hospital.local" ;;
    NGINX_RATE_LIMIT) [[ "${value}" =~ ^[1-9][0-9]{0,5}r/[sm]$ ]] || rule="a rate such as 20r/s or 600r/m" ;;
    NGINX_RATE_BURST) in_range "${value}" 0 999999 || rule="a whole number from 0 to 999999" ;;
    NGINX_CONN_LIMIT) in_range "${value}" 1 999999 || rule="a whole number from 1 to 999999" ;;
    CHEXNET_MAX_UPLOAD_MB) in_range "${value}" 1 1024 || rule="a whole number of MiB from 1 to 1024" ;;
    API_REPLICAS) in_range "${value}" 1 99 || rule="a number of API tasks from 1 to 99" ;;
    API_MEM_LIMIT) [[ "${value}" =~ ^[1-9][0-9]{0,12}[bkmgBKMG]?$ ]] || rule="a memory size such as 3g or 4096m" ;;
    CHEXNET_VARIANT) [[ "${value}" == cpu || "${value}" == gpu ]] || rule="cpu or gpu" ;;
    CHEXNET_VERSION) [[ "${value}" =~ ^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$ ]] || rule="a version such as 0.1.0" ;;
    COMPOSE_PROFILES) [[ "${value}" =~ ^[a-z0-9_-]{1,32}(,[a-z0-9_-]{1,32}){0,7}$ ]] || rule="a comma list of profiles such as dicom" ;;
  esac
  [[ -z "${rule}" ]] || die "${key} in ${DIR}/.env must be ${rule}."
}

# check_site_env: ${DIR}/.env is a regular file of root's, each line blank, a comment or KEY=VALUE with a
# value check_env_value accepts whole. Dies with one sentence (naming the variable) on the first problem.
check_site_env() {
  local file="${DIR}/.env" line number=0 key value
  check_site_file "${file}"
  [[ "$(tr -cd '\000' < "${file}" | wc -c)" -eq 0 ]] || die "${file} holds a NUL byte; write it again as plain text."
  while IFS= read -r line || [[ -n "${line}" ]]; do
    number=$((number + 1))
    [[ "${line}" =~ ^[[:blank:]]*(#.*)?$ ]] && continue
    [[ "${line}" =~ ^([A-Za-z_][A-Za-z0-9_]{0,63})=(.*)$ ]] \
      || die "line ${number} of ${file} is neither KEY=VALUE nor a comment; write one setting per line."
    key="${BASH_REMATCH[1]}"
    value="${BASH_REMATCH[2]}"
    check_env_value "${key}" "${value}"
  done < "${file}"
}

# KEY's value in the site's ${DIR}/.env (DIR: the install folder of the calling script), empty if unset.
# Only after check_site_env: that is what makes the value safe to use whole.
env_value() {
  [[ -f "${DIR}/.env" ]] || return 0
  sed -n "s/^$1=//p" "${DIR}/.env" | tail -n 1
}

# Set KEY=VALUE in ${DIR}/.env, in place of the line that sets KEY, or added at the end. VALUE is checked
# whole first (it then holds no '|', '&' or '\' that sed would read).
set_env() {
  check_env_value "$1" "$2"
  if grep -q "^$1=" "${DIR}/.env"; then
    sed -i "s|^$1=.*|$1=$2|" "${DIR}/.env"
  else
    printf '%s=%s\n' "$1" "$2" >> "${DIR}/.env"
  fi
}

# --- files root reads in the install folder (containers write into some of its folders) -------------
# check_site_file FILE [UID...]: dies unless FILE is a regular file (not a link, FIFO or device) with no
# other name (hard link), owned by root, by whoever runs this script, or by one of UIDs. A link a
# container planted in certs/ would otherwise have root read, and hand on, whatever it points at.
check_site_file() {
  local file="$1" owner links uid
  shift
  [[ ! -L "${file}" && -f "${file}" ]] \
    || die "${file} is not a regular file (a link, FIFO or device there is refused, and not read); put the file itself there."
  read -r owner links <<< "$(stat -c '%u %h' -- "${file}")"
  [[ "${links}" == 1 ]] || die "${file} has other names (hard links), so it is not read; put a copy of the file there."
  for uid in 0 "${EUID}" "$@"; do
    [[ "${owner}" != "${uid}" ]] || return 0
  done
  die "${file} belongs to uid ${owner}, not to root${1:+ or uid $*}, so it is not read; chown it or put your own copy there."
}

# copy_site_file FILE COPY [UID...]: root's private copy (mode 600) of FILE after check_site_file, read
# without following a link or waiting on a FIFO swapped in since, refused if FILE changed meanwhile.
copy_site_file() {
  local file="$1" copy="$2" before after
  shift 2
  check_site_file "${file}" "$@"
  before="$(stat -c '%d:%i:%h:%u:%F' -- "${file}")"
  rm -f -- "${copy}"
  if ! (umask 077 && dd if="${file}" of="${copy}" iflag=nofollow,nonblock status=none 2>/dev/null) \
     || ! after="$(stat -c '%d:%i:%h:%u:%F' -- "${file}")" || [[ "${after}" != "${before}" ]]; then
    rm -f -- "${copy}"
    die "${file} was replaced while it was read, so it is not used; run this again."
  fi
}

# The site's ${DIR}/.env: an existing one is kept (a copy in .env.bak), else made from the .env.example
# the caller copied into ${DIR}; then CHEXNET_VERSION, CHEXNET_VARIANT and the SETTINGS the command line gave are set.
write_site_env() {
  local name
  if [[ -e "${DIR}/.env" || -L "${DIR}/.env" ]]; then
    check_site_env
    log "keeping the existing ${DIR}/.env (a copy is in .env.bak)"
    cp "${DIR}/.env" "${DIR}/.env.bak"
  else
    cp "${DIR}/.env.example" "${DIR}/.env"
    log "wrote ${DIR}/.env from .env.example"
    check_site_env
  fi
  chmod 600 "${DIR}/.env"
  set_env CHEXNET_VERSION "${VERSION}"
  set_env CHEXNET_VARIANT "${VARIANT}"
  for name in "${!SETTINGS[@]}"; do
    set_env "${name}" "${SETTINGS[${name}]}"
    log "set ${name}=${SETTINGS[${name}]} in ${DIR}/.env"
  done
}

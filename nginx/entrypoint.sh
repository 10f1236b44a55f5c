#!/bin/sh
# Render the settings nginx takes from the environment into /run/chexnet-nginx (the root filesystem
# is read-only), make a self-signed certificate on site when the customer supplied none, check the
# configuration, then run nginx. Runs as uid 10002 with no capabilities.
set -eu

# The folders are fixed in the image (nginx.conf names them); the tests point these two elsewhere.
CERTS="${CHEXNET_NGINX_CERTS:-/etc/nginx/certs}"
GENERATED="${CHEXNET_NGINX_GENERATED:-/run/chexnet-nginx}"
MAX_UPLOAD_MB="${CHEXNET_MAX_UPLOAD_MB:-64}"
RATE="${NGINX_RATE_LIMIT:-20r/s}"
BURST="${NGINX_RATE_BURST:-40}"
CONNECTIONS="${NGINX_CONN_LIMIT:-32}"
HOSTNAME_TLS="${TLS_HOSTNAME:-chexnet.local}"
HTTPS_PORT_PUBLIC="${PUBLIC_HTTPS_PORT:-443}"
API_TASKS="${NGINX_API_TASKS:-}"
DICOMWEB_MAX_MB="${CHEXNET_DICOMWEB_MAX_REQUEST_MB:-1024}"

fail() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Every value is checked whole with case patterns, before anything is written; never with echo | grep:
# dash's echo turns '\n' into a line break and grep matches line by line, so a valid first line would
# carry nginx directives in after it. Character sets are spelled out, not ranges, for any locale.
DIGITS=0123456789
DNS_CHARS=abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-

# number NAME VALUE MIN MAX: a whole number from MIN to MAX, without sign or leading zero, at most 6 digits.
number() {
  case "$2" in
    ''|*[!${DIGITS}]*|0?*) fail "$1 must be a whole number from $3 to $4." ;;
  esac
  if [ "${#2}" -gt 6 ] || [ "$2" -lt "$3" ] || [ "$2" -gt "$4" ]; then
    fail "$1 must be a whole number from $3 to $4."
  fi
}

# dns_name NAME VALUE: letters, digits, '.' and '-', neither first nor last a '.' or '-', at most 253.
dns_name() {
  case "$2" in
    ''|*[!${DNS_CHARS}]*|[.-]*|*[.-]) fail "$1 must be a DNS name such as chexnet.hospital.local." ;;
  esac
  [ "${#2}" -le 253 ] || fail "$1 must be a DNS name of at most 253 characters."
}

number CHEXNET_MAX_UPLOAD_MB "${MAX_UPLOAD_MB}" 1 1024
number NGINX_RATE_BURST "${BURST}" 0 999999
number NGINX_CONN_LIMIT "${CONNECTIONS}" 1 999999
number HTTPS_PORT "${HTTPS_PORT_PUBLIC}" 1 65535
number CHEXNET_DICOMWEB_MAX_REQUEST_MB "${DICOMWEB_MAX_MB}" 1 65536
case "${RATE}" in
  [123456789]*r/s|[123456789]*r/m) ;;
  *) fail "NGINX_RATE_LIMIT must look like 20r/s or 600r/m." ;;
esac
case "${RATE%r/?}" in
  *[!${DIGITS}]*) fail "NGINX_RATE_LIMIT must look like 20r/s or 600r/m." ;;
esac
[ "${#RATE}" -le 9 ] || fail "NGINX_RATE_LIMIT must look like 20r/s or 600r/m, at most 999999 a second or minute."
dns_name TLS_HOSTNAME "${HOSTNAME_TLS}"
[ -z "${API_TASKS}" ] || dns_name NGINX_API_TASKS "${API_TASKS}"

mkdir -p "${GENERATED}"
# The body limit matches the API's upload limit, plus 1 MiB of multipart framing.
cat > "${GENERATED}/http.conf" <<CONF
client_max_body_size $((MAX_UPLOAD_MB + 1))m;
limit_req_zone \$binary_remote_addr zone=chexnet_api:10m rate=${RATE};
limit_conn_zone \$binary_remote_addr zone=chexnet_conn:10m;
CONF
printf 'limit_req zone=chexnet_api burst=%s nodelay;\nlimit_conn chexnet_conn %s;\n' "${BURST}" "${CONNECTIONS}" > "${GENERATED}/limits.conf"
# nginx's own 413 says what the API's says: the limit and the setting that sets it.
printf '%s\n' "return 413 '{\"error\":{\"code\":\"payload_too_large\",\"message\":\"The upload is larger than the upload limit of ${MAX_UPLOAD_MB} MiB (CHEXNET_MAX_UPLOAD_MB).\",\"request_id\":\"\$chexnet_request_id\"}}';" > "${GENERATED}/too-large.conf"
# STOW-RS to the DICOM node (/dicomweb/): its own body limit, the node's, and the sentence that names it.
printf 'client_max_body_size %sm;\n' "${DICOMWEB_MAX_MB}" > "${GENERATED}/dicomweb.conf"
printf '%s\n' "return 413 '{\"error\":{\"code\":\"payload_too_large\",\"message\":\"The STOW-RS request is larger than the limit of ${DICOMWEB_MAX_MB} MiB (CHEXNET_DICOMWEB_MAX_REQUEST_MB); send the study in several requests.\",\"request_id\":\"\$chexnet_request_id\"}}';" > "${GENERATED}/dicomweb-too-large.conf"
# Redirect to the configured name and published HTTPS port, never to the Host header a client sent.
case "${HTTPS_PORT_PUBLIC}" in
  443) printf "return 301 https://%s\$request_uri;\n" "${HOSTNAME_TLS}" ;;
  *) printf "return 301 https://%s:%s\$request_uri;\n" "${HOSTNAME_TLS}" "${HTTPS_PORT_PUBLIC}" ;;
esac > "${GENERATED}/redirect.conf"

# The API behind: compose's one container (a keep-alive pool), or a Swarm stack's tasks
# (NGINX_API_TASKS=tasks.api): Swarm's DNS names the healthy tasks, re-read every 2 s, and a request
# that fails on one task (killed, or stopping in a rolling update) is sent to another. A task that is gone
# (crashed, or on a node lost) may still be named for a few seconds, and a connection to it is not refused
# but unanswered: 2 s, not compose's 5 s, before the next task (on the overlay a connection takes under a
# millisecond; 2 s still waits out one lost SYN). On three test nodes the slowest answer during a crash or a
# node's loss was 5.1 s with 5 s (BENCHMARKS.md).
: > "${GENERATED}/upstream.conf"
case "${API_TASKS}" in
  '') printf 'upstream chexnet_api {\n    server api:8080;\n    keepalive 16;\n}\n' > "${GENERATED}/upstream.conf"
      printf 'proxy_pass http://chexnet_api;\nproxy_connect_timeout 5s;\n' > "${GENERATED}/proxy.conf"
      echo "proxy_pass http://chexnet_api/api/v1/license;" > "${GENERATED}/auth.conf" ;;
  *) cat > "${GENERATED}/proxy.conf" <<CONF
resolver 127.0.0.11 valid=2s ipv6=off;
resolver_timeout 2s;
set \$chexnet_api_tasks ${API_TASKS};
proxy_pass http://\$chexnet_api_tasks:8080;
proxy_next_upstream error timeout http_503 non_idempotent;
proxy_next_upstream_tries 3;
proxy_connect_timeout 2s;
CONF
     cat > "${GENERATED}/auth.conf" <<CONF
resolver 127.0.0.11 valid=2s ipv6=off;
resolver_timeout 2s;
set \$chexnet_api_tasks ${API_TASKS};
proxy_pass http://\$chexnet_api_tasks:8080/api/v1/license;
CONF
  ;;
esac

if [ ! -s "${CERTS}/server.crt" ] || [ ! -s "${CERTS}/server.key" ]; then
  [ -w "${CERTS}" ] || fail "${CERTS} is not writable by uid $(id -u): run 'chown -R 10002:10002 certs' in the install folder (install.sh does), or put server.crt and server.key there."
  echo "no certificate in ${CERTS}: generating a self-signed one for ${HOSTNAME_TLS}" >&2
  openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 825 -subj "/CN=${HOSTNAME_TLS}" \
    -addext "subjectAltName=DNS:${HOSTNAME_TLS},DNS:localhost,IP:127.0.0.1" \
    -keyout "${CERTS}/server.key" -out "${CERTS}/server.crt" 2>/dev/null
  chmod 600 "${CERTS}/server.key"
fi
[ -r "${CERTS}/server.key" ] || fail "${CERTS}/server.key is not readable by uid $(id -u): run 'chown -R 10002:10002 certs' in the install folder."

nginx -e stderr -t -q
exec "$@"

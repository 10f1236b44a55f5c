#!/bin/sh
# Render the settings nginx takes from the environment into /run/chexnet-nginx (the root filesystem
# is read-only), make a self-signed certificate on site when the customer supplied none, check the
# configuration, then run nginx. Runs as uid 10002 with no capabilities.
set -eu

CERTS=/etc/nginx/certs
GENERATED=/run/chexnet-nginx
MAX_UPLOAD_MB="${CHEXNET_MAX_UPLOAD_MB:-64}"
RATE="${NGINX_RATE_LIMIT:-20r/s}"
BURST="${NGINX_RATE_BURST:-40}"
CONNECTIONS="${NGINX_CONN_LIMIT:-32}"
HOSTNAME_TLS="${TLS_HOSTNAME:-chexnet.local}"

fail() { echo "error: $*" >&2; exit 1; }
case "${MAX_UPLOAD_MB}" in ''|*[!0-9]*) fail "CHEXNET_MAX_UPLOAD_MB must be a whole number of MiB." ;; esac
case "${BURST}" in ''|*[!0-9]*) fail "NGINX_RATE_BURST must be a whole number." ;; esac
case "${CONNECTIONS}" in ''|*[!0-9]*|0) fail "NGINX_CONN_LIMIT must be a whole number above 0." ;; esac
echo "${RATE}" | grep -Eq '^[0-9]+r/[sm]$' || fail "NGINX_RATE_LIMIT must look like 20r/s or 600r/m."
echo "${HOSTNAME_TLS}" | grep -Eq '^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$' || fail "TLS_HOSTNAME must be a DNS name."
case "${PUBLIC_HTTPS_PORT:-443}" in *[!0-9]*|'') fail "HTTPS_PORT must be a port number." ;; esac

mkdir -p "${GENERATED}"
# The body limit matches the API's upload limit, plus 1 MiB of multipart framing.
cat > "${GENERATED}/http.conf" <<CONF
client_max_body_size $((MAX_UPLOAD_MB + 1))m;
limit_req_zone \$binary_remote_addr zone=chexnet_api:10m rate=${RATE};
limit_conn_zone \$binary_remote_addr zone=chexnet_conn:10m;
CONF
printf 'limit_req zone=chexnet_api burst=%s nodelay;\nlimit_conn chexnet_conn %s;\n' "${BURST}" "${CONNECTIONS}" > "${GENERATED}/limits.conf"
# Redirect to the configured name and published HTTPS port, never to the Host header a client sent.
case "${PUBLIC_HTTPS_PORT:-443}" in
  443) echo "return 301 https://${HOSTNAME_TLS}\$request_uri;" ;;
  *) echo "return 301 https://${HOSTNAME_TLS}:${PUBLIC_HTTPS_PORT}\$request_uri;" ;;
esac > "${GENERATED}/redirect.conf"

# The API behind: compose's one container (a keep-alive pool), or a Swarm stack's tasks
# (NGINX_API_TASKS=tasks.api): Swarm's DNS names the healthy tasks, re-read every 2 s, and a request
# that fails on one task (killed, or stopping in a rolling update) is sent to another.
: > "${GENERATED}/upstream.conf"
case "${NGINX_API_TASKS:-}" in
  '') printf 'upstream chexnet_api {\n    server api:8080;\n    keepalive 16;\n}\n' > "${GENERATED}/upstream.conf"
      echo "proxy_pass http://chexnet_api;" > "${GENERATED}/proxy.conf" ;;
  *[!A-Za-z0-9.-]*) fail "NGINX_API_TASKS must be a DNS name such as tasks.api." ;;
  *) cat > "${GENERATED}/proxy.conf" <<CONF
resolver 127.0.0.11 valid=2s ipv6=off;
resolver_timeout 2s;
set \$chexnet_api_tasks ${NGINX_API_TASKS};
proxy_pass http://\$chexnet_api_tasks:8080;
proxy_next_upstream error timeout http_503 non_idempotent;
proxy_next_upstream_tries 3;
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

#!/bin/sh
# Render the settings nginx takes from the environment, make a self-signed certificate on site when
# the customer supplied none, check the configuration, then run nginx.
set -eu

CERTS=/etc/nginx/certs
GENERATED=/etc/nginx/chexnet
MAX_UPLOAD_MB="${CHEXNET_MAX_UPLOAD_MB:-64}"
RATE="${NGINX_RATE_LIMIT:-20r/s}"
BURST="${NGINX_RATE_BURST:-40}"
HOSTNAME_TLS="${TLS_HOSTNAME:-chexnet.local}"

case "${MAX_UPLOAD_MB}" in ''|*[!0-9]*) echo "error: CHEXNET_MAX_UPLOAD_MB must be a whole number of MiB." >&2; exit 1 ;; esac
case "${BURST}" in ''|*[!0-9]*) echo "error: NGINX_RATE_BURST must be a whole number." >&2; exit 1 ;; esac

mkdir -p "${GENERATED}" "${CERTS}"
# The body limit matches the API's upload limit, plus 1 MiB of multipart framing.
cat > "${GENERATED}/http.conf" <<CONF
client_max_body_size $((MAX_UPLOAD_MB + 1))m;
limit_req_zone \$binary_remote_addr zone=chexnet_api:10m rate=${RATE};
CONF
echo "limit_req zone=chexnet_api burst=${BURST} nodelay;" > "${GENERATED}/limit_req.conf"
# Redirect to the port the host publishes HTTPS on (443 unless HTTPS_PORT says otherwise).
case "${PUBLIC_HTTPS_PORT:-443}" in
  443) echo "return 301 https://\$host\$request_uri;" ;;
  *[!0-9]*|'') echo "error: HTTPS_PORT must be a port number." >&2; exit 1 ;;
  *) echo "return 301 https://\$host:${PUBLIC_HTTPS_PORT}\$request_uri;" ;;
esac > "${GENERATED}/redirect.conf"

if [ ! -s "${CERTS}/server.crt" ] || [ ! -s "${CERTS}/server.key" ]; then
  echo "no certificate in ${CERTS}: generating a self-signed one for ${HOSTNAME_TLS}" >&2
  openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 825 -subj "/CN=${HOSTNAME_TLS}" \
    -addext "subjectAltName=DNS:${HOSTNAME_TLS},DNS:localhost,IP:127.0.0.1" \
    -keyout "${CERTS}/server.key" -out "${CERTS}/server.crt" 2>/dev/null
  chmod 600 "${CERTS}/server.key"
fi

nginx -t -q
exec "$@"

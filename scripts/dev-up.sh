#!/usr/bin/env bash
# One command from a checkout to a running stack, the way a field engineer installs it:
# build the images (demo bundles inside), pack the offline package with a development vendor key,
# install it into build/dev-site on 127.0.0.1, issue a development token for this machine, and
# print a sample prediction made through nginx.
# Usage: scripts/dev-up.sh [--dir build/dev-site] [--https-port 8443] [--http-port 8080]
set -eEuo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib.sh
source "${ROOT}/scripts/lib.sh"
trap_errors

SITE="${ROOT}/build/dev-site"
HTTPS_PORT=8443
HTTP_PORT=8080
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) SITE="$2"; shift 2 ;;
    --https-port) HTTPS_PORT="$2"; shift 2 ;;
    --http-port) HTTP_PORT="$2"; shift 2 ;;
    *) die "unknown option $1 (use --dir, --https-port, --http-port)" ;;
  esac
done
PYTHON="${PYTHON:-${ROOT}/.venv/bin/python}"
KEYS="${ROOT}/build/dev-vendor"
VERSION="$(project_version "${ROOT}")"

"${ROOT}/scripts/build-images.sh" cpu
[[ -f "${KEYS}/vendor_private.pem" ]] || "${PYTHON}" -m licensing keygen --out "${KEYS}" >/dev/null
[[ -f "${KEYS}/package_signing.key" ]] || "${PYTHON}" -m licensing package-keygen --out "${KEYS}" >/dev/null
"${ROOT}/scripts/package-offline.sh" --signing-key "${KEYS}/package_signing.key" --license-key "${KEYS}/vendor_public.pem" --variant cpu

log "unpacking the offline package"
UNPACKED="${ROOT}/build/dev-unpacked"
rm -rf "${UNPACKED}" && mkdir -p "${UNPACKED}" "${SITE}"
TARBALL="${ROOT}/dist/chexnet-offline-${VERSION}-cpu.tar.gz"
tar -C "${UNPACKED}" --no-same-owner --no-same-permissions -xzf "${TARBALL}"

# This machine's identity; a VM without SMBIOS gets a development UUID of its own, kept in the site.
UUID_FILE=/sys/class/dmi/id/product_uuid
if ! "${ROOT}/scripts/product-uuid.sh" "${UUID_FILE}" >/dev/null 2>&1; then
  UUID_FILE="${SITE}/dev-product-uuid"
  [[ -s "${UUID_FILE}" ]] || "${PYTHON}" -c "import uuid; print(uuid.uuid4())" > "${UUID_FILE}"
  warn "no readable SMBIOS product_uuid here: using the development UUID in ${UUID_FILE}"
fi
TOKEN="${SITE}/dev-token"
"${PYTHON}" -m licensing issue --key "${KEYS}/vendor_private.pem" --product-uuid "$("${ROOT}/scripts/product-uuid.sh" "${UUID_FILE}")" \
  --customer "Development" --subject "dev-$(whoami)" --days 30 --features cxr10,cxr25,chestxray14 > "${TOKEN}"
chmod 600 "${TOKEN}"

# The installer verifies the tarball itself (kept in dist/, not beside the unpacked folder: --package).
"${UNPACKED}/chexnet-offline-${VERSION}-cpu/install.sh" --package "${TARBALL}" --dir "${SITE}" --vendor-key "${KEYS}/vendor_package.crt" \
  --uuid-file "${UUID_FILE}" --token-file "${TOKEN}" --bind 127.0.0.1 --https-port "${HTTPS_PORT}" --http-port "${HTTP_PORT}" \
  --hostname localhost
port="$(sed -n 's/^HTTPS_PORT=//p' "${SITE}/.env")"
cat >&2 <<MSG

CheXNet is up: https://localhost:${port}/ (browser page), https://localhost:${port}/api/v1/docs
  token:       ${TOKEN}
  certificate: ${SITE}/certs/server.crt
  try:  curl --cacert ${SITE}/certs/server.crt -H "Authorization: Bearer \$(cat ${TOKEN})" \\
             -F image=@../shared/data/nih/00000075_000.png https://localhost:${port}/api/v1/predict
  stop: (cd ${SITE} && docker-compose down)
MSG

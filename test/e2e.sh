#!/usr/bin/env bash
# End to end, as CI runs it: build the images, pack the CPU offline package, install it into a fresh
# directory the way a field engineer would (the install uses only the tarball), run the QA script and
# the fault tests against it, smoke-test the GPU image on the CPU, and always tear everything down.
# Needs Docker running, root, and ../shared/data. Ports: 127.0.0.1:18443 (HTTPS), 127.0.0.1:18080 (HTTP).
set -eEuo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=../scripts/lib.sh
source "${ROOT}/scripts/lib.sh"
trap_errors

PYTHON="${ROOT}/.venv/bin/python"
SAMPLES="$(cd "${ROOT}/../shared/data" && pwd)"
VERSION="$(project_version "${ROOT}")"
WORK="$(mktemp -d /tmp/chexnet-e2e.XXXXXX)"
SITE="${WORK}/site"
KEYS="${WORK}/vendor"
HOST_UUID="$("${PYTHON}" -c 'import uuid; print(uuid.uuid4())')"
COMPOSE="$(compose_command)" || die "no Docker Compose installed."

teardown() {
  log "teardown"
  if [[ -f "${SITE}/docker-compose.yml" ]]; then
    (cd "${SITE}" && ${COMPOSE} down --volumes --remove-orphans >/dev/null 2>&1) || true
  fi
  rm -rf "${WORK}"
}
trap teardown EXIT

log "1/6 images (CPU, GPU, nginx)"
"${ROOT}/scripts/build-images.sh" all

log "2/6 offline package, signed with a throw-away vendor key"
"${PYTHON}" -m licensing keygen --out "${KEYS}" >/dev/null
"${ROOT}/scripts/package-offline.sh" --key "${KEYS}/vendor_private.pem" --variant cpu

log "3/6 install from the tarball alone into ${SITE}"
mkdir -p "${WORK}/unpacked" "${SITE}"
tar -C "${WORK}/unpacked" -xzf "${ROOT}/dist/chexnet-offline-${VERSION}-cpu.tar.gz"
PACKAGE="${WORK}/unpacked/chexnet-offline-${VERSION}-cpu"
echo "${HOST_UUID}" > "${WORK}/product_uuid"
sed -e 's/^BIND_ADDRESS=.*/BIND_ADDRESS=127.0.0.1/' -e 's/^HTTPS_PORT=.*/HTTPS_PORT=18443/' \
    -e 's/^HTTP_PORT=.*/HTTP_PORT=18080/' -e 's/^TLS_HOSTNAME=.*/TLS_HOSTNAME=localhost/' \
    "${PACKAGE}/.env.example" > "${SITE}/.env"
issue() {
  "${PYTHON}" -m licensing issue --key "${KEYS}/vendor_private.pem" --customer "QA" --days 2 \
    --features cxr10,cxr25,chestxray14 "$@"
}
issue --product-uuid "${HOST_UUID}" --subject qa > "${WORK}/token"
issue --product-uuid "$("${PYTHON}" -c 'import uuid; print(uuid.uuid4())')" --subject elsewhere > "${WORK}/wrong-host-token"
"${PYTHON}" - "${KEYS}/vendor_private.pem" "${HOST_UUID}" > "${WORK}/expired-token" <<'PY'
import sys, time
from licensing.keys import load_private_key
from licensing.tokens import issue_token
# Issued 3 days ago for 1 day: expired two days ago, far beyond any clock leeway.
print(issue_token(load_private_key(sys.argv[1]), product_uuid=sys.argv[2], customer="QA", subject="expired",
                  days=1, features=["cxr10"], now=time.time() - 3 * 86400))
PY
"${PACKAGE}/install.sh" --dir "${SITE}" --uuid-file "${WORK}/product_uuid" --token-file "${WORK}/token" --timeout 600

export CHEXNET_QA_URL=https://localhost:18443 CHEXNET_QA_HTTP_URL=http://localhost:18080 \
       CHEXNET_QA_TOKEN_FILE="${WORK}/token" CHEXNET_QA_CA_CERT="${SITE}/certs/server.crt" \
       CHEXNET_QA_WRONG_HOST_TOKEN_FILE="${WORK}/wrong-host-token" CHEXNET_QA_EXPIRED_TOKEN_FILE="${WORK}/expired-token" \
       CHEXNET_QA_SAMPLES="${SAMPLES}" CHEXNET_E2E_SITE="${SITE}"

log "4/6 QA script against the CPU stack"
"${PYTHON}" "${ROOT}/test/test_chexnet_docker.py" --url "${CHEXNET_QA_URL}" --http-url "${CHEXNET_QA_HTTP_URL}" \
  --token-file "${WORK}/token" --ca-cert "${SITE}/certs/server.crt" --samples "${SAMPLES}" \
  --wrong-host-token-file "${WORK}/wrong-host-token" --expired-token-file "${WORK}/expired-token"

log "5/6 faults: API crash and restart, corrupted model, expired token"
(cd "${ROOT}" && "${PYTHON}" -m pytest -m e2e test/test_e2e_faults.py -p no:cacheprovider)

log "6/6 GPU image on the CPU (no GPU here)"
out="$(docker run --rm -v "${SAMPLES}:/data:ro" "chexnet-api-gpu:${VERSION}" \
  python -m chexnet predict --bundle /opt/chexnet/models/cxr10 --engine torch --device auto --json /data/nih/00000075_000.png)"
echo "${out}" | cut -c1-240
echo "${out}" | "${PYTHON}" -c 'import json,sys; r=json.loads(sys.stdin.readline()); assert r["model"]["engine"]=="torch" and r["model"]["device"]=="cpu" and len(r["findings"])==10, r'
log "end to end: all passed"

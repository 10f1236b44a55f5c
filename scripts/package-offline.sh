#!/usr/bin/env bash
# Pack what a field engineer carries: dist/chexnet-offline-<version>-<variant>.tar.gz holding the
# docker-saved images, the deployment template, the scripts, the docs, SHA256SUMS and the vendor's
# Ed25519 signature over SHA256SUMS. The contents are the explicit list below.
# Usage: package-offline.sh --key vendor_private.pem [--variant cpu|gpu]
set -eEuo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib.sh
source "${ROOT}/scripts/lib.sh"
trap_errors

VARIANT=cpu
KEY=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --variant) VARIANT="$2"; shift 2 ;;
    --key) KEY="$2"; shift 2 ;;
    *) die "unknown option $1 (use --key PRIV.pem [--variant cpu|gpu])" ;;
  esac
done
[[ "${VARIANT}" == cpu || "${VARIANT}" == gpu ]] || die "--variant must be cpu or gpu."
[[ -f "${KEY}" ]] || die "--key must name the vendor's Ed25519 private key (python -m licensing keygen)."
[[ "$(stat -c %a "${KEY}")" == 600 ]] || die "${KEY} must be mode 600 (chmod 600 ${KEY})."

VERSION="$(project_version "${ROOT}")"
NAME="chexnet-offline-${VERSION}-${VARIANT}"
STAGE="${ROOT}/dist/${NAME}"
IMAGES=("chexnet-api-${VARIANT}:${VERSION}" "chexnet-nginx:${VERSION}")
for image in "${IMAGES[@]}"; do
  docker image inspect "${image}" >/dev/null 2>&1 || die "image ${image} is missing; run scripts/build-images.sh ${VARIANT} first."
done

log "staging ${STAGE}"
rm -rf "${STAGE}"
mkdir -p "${STAGE}"/{images,scripts,docs,license/keys}
install -m 755 "${ROOT}"/deployment_template/install.sh "${ROOT}"/deployment_template/install.ps1 "${STAGE}/"
install -m 644 "${ROOT}"/deployment_template/{docker-compose.yml,docker-compose.gpu.yml,.env.example,README.md} "${STAGE}/"
install -m 755 "${ROOT}"/scripts/{preflight.sh,load-images.sh,product-uuid.sh} "${STAGE}/scripts/"
install -m 644 "${ROOT}"/scripts/{lib.sh,versions.env,preflight.ps1,load-images.ps1,product-uuid.ps1} "${STAGE}/scripts/"
install -m 644 "${ROOT}"/README.md "${ROOT}"/BENCHMARKS.md "${STAGE}/docs/"
# The API trusts a directory of <kid>.pem (key rotation); kid = sha256 of the raw public key, 16 hex.
KID="$(openssl pkey -in "${KEY}" -pubout -outform DER | tail -c 32 | sha256sum | cut -c1-16)"
openssl pkey -in "${KEY}" -pubout -out "${STAGE}/license/keys/${KID}.pem"
echo "${VERSION}" > "${STAGE}/VERSION"
echo "${VARIANT}" > "${STAGE}/VARIANT"

log "docker save ${IMAGES[*]} (compressing)"
docker save "${IMAGES[@]}" | pigz -6 > "${STAGE}/images/chexnet-${VERSION}-${VARIANT}.tar.gz"

log "SHA256SUMS and vendor signature"
(cd "${STAGE}" && find . -type f -printf '%P\n' | sort | xargs sha256sum > ../SHA256SUMS.tmp && mv ../SHA256SUMS.tmp SHA256SUMS)
openssl pkeyutl -sign -inkey "${KEY}" -rawin -in "${STAGE}/SHA256SUMS" -out "${STAGE}/SHA256SUMS.sig"

tar -C "${ROOT}/dist" -cf - "${NAME}" | pigz -1 > "${ROOT}/dist/${NAME}.tar.gz"
rm -rf "${STAGE}"
(cd "${ROOT}/dist" && sha256sum "${NAME}.tar.gz" > "${NAME}.tar.gz.sha256")
log "wrote dist/${NAME}.tar.gz ($(du -h "${ROOT}/dist/${NAME}.tar.gz" | cut -f1))"
